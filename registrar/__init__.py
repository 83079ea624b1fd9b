"""The registrar: accepts signed operations, checks their authority, anchors them in its log."""
