"""Real runtimes that halfsim's predictions are compared against."""
