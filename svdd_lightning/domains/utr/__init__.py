"""RNA 5'UTR design: data, rewards, oracles."""
