"""What users run: check, bench, doctor, bundle.  Each returns data; ``cli`` prints it."""
