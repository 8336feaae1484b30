exports.GET = (req, res) => res.json({ status: "ok" })
