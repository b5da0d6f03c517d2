"""Server identity: signing keys, signed JSON, X-Matrix request auth, remote key cache."""
