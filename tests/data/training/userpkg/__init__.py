"""A user's package of components, copied into a temporary folder by the tests."""
