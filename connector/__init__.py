"""commercetools payment connector: queue deliveries in, PSP operations out, outcomes written back."""
