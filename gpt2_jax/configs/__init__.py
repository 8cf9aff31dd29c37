"""Config files shipped inside the package (the default run)."""
