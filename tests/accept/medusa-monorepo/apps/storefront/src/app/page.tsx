export default function Index() {
  return <main>Kiln acceptance storefront</main>
}
