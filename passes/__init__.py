"""HoliTom FX rewrite passes (one per file)."""
