"""``bench ensemble``: merging runs' out-of-fold and test probabilities, choosing weights and
threshold out of fold, and writing the submission."""
