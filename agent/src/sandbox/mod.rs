//! Runs one job in a fresh sandbox. (Being written.)
