"""The commercetools API: OAuth2 tokens, payments, types."""
