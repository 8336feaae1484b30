// As Medusa's starter: the publishable key is needed at build time.
if (!process.env.NEXT_PUBLIC_MEDUSA_PUBLISHABLE_KEY) {
  throw new Error("NEXT_PUBLIC_MEDUSA_PUBLISHABLE_KEY is not set; the storefront cannot reach the Store API")
}

module.exports = {
  reactStrictMode: true,
}
