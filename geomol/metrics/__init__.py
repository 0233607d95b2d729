"""Chemistry metrics of generated molecules: stability, validity, uniqueness, closed shells, property errors."""
