import { sdk } from "@lib/sdk"

// As Medusa's starter: one page per country of every region, asked of the Store
// API when the storefront is built.
export async function generateStaticParams() {
  const { regions } = await sdk.store.region.list()
  return regions.flatMap((region) =>
    (region.countries ?? []).map((country) => ({ countryCode: country.iso_2 }))
  )
}

export default async function Home({ params }: { params: Promise<{ countryCode: string }> }) {
  const { countryCode } = await params
  const { collections } = await sdk.store.collection.list()
  return (
    <main>
      <h1>Store ({countryCode})</h1>
      <ul>
        {collections.map((collection) => (
          <li key={collection.id}>{collection.title}</li>
        ))}
      </ul>
    </main>
  )
}
