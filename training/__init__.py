"""Fine-tune Molmo2 on recordings: datasets, target rendering, trainer, metrics, evaluation."""
