"""Stage 3: reinforcement-learning alignment (the UnsafeConcepts / SaferVLM method), PPO as published and GRPO."""
