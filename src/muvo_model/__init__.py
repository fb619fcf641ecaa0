"""muvo_model: camera + lidar anomaly detection on AnoVox, trained right."""
