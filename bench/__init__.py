"""`make bench`: Keel's speed measured against the raw JetStream floor of the same server, same run."""
