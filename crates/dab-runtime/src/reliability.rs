//! Reliability (REP) scores per (host, pid, type); being built (issue 4).
