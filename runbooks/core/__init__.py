"""The vocabulary every layer speaks: errors, redaction, visible text, the market calendar and the
paths no cleanup may touch. Imports nothing of the project."""
