"""The embedded default's world: a generated support domain, general skills and simulated users
whose feedback follows answer quality. `kaizen demo` drives it; nothing outside demo/ imports it."""
