"""Safety modules for a frozen LLaVA-v1.5."""
