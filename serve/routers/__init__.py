"""HTTP routes: health (open), Open Inference Protocol v2, image upload, admin/metrics."""
