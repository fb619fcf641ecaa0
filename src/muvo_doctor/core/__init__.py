"""What a run is judged on and how: observations, the bounded history, thresholds, the checks and the Doctor that runs them."""
