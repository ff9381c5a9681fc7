"""The benchmark harness: data, prompts, base models, training, generation, answer extraction, evaluation."""
