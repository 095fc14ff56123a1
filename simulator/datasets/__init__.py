"""Public measured training runs as parasim jobs (the data lives in ../shared/data/)."""
