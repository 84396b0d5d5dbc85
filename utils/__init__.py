"""Small modules, one concept each, shared by every stage script."""
