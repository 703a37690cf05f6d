//! A fake Compute Engine on loopback (work in progress).
