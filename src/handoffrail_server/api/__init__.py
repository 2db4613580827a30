"""HTTP layer shared by every feature: problem documents, auth, role rules, health."""
