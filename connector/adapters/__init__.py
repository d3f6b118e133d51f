"""PSP adapters: the plugin contract, the registry that routes payments to them, and built-ins."""
