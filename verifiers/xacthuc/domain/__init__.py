"""The domain: Decree 147's rules, decisions, errors, ages, numbers, token and log formats. No I/O."""
