"""OVF descriptors: version tables (names), reading (reader), writing (writer)."""
