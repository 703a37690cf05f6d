//! The trace: games to replay and reservations announced ahead, read from and written to CSV.
//!
//! # Format
//! A header line naming the columns, then one row per game or reservation. Columns are found by
//! name (any order); only `start_s` and `duration_s` are required. Empty lines and lines
//! starting with `#` are skipped.
//!
//! | column | game row | reservation row |
//! |---|---|---|
//! | `kind` | `game` (the default when the column is absent) | `reservation` |
//! | `start_s` | when the game starts (s from the trace's origin) | when its games start arriving |
//! | `duration_s` | how long the game lives | the window its games arrive in |
//! | `executions` | executions over the game's life (default 0) | empty |
//! | `games` | empty | games announced |
//! | `burst` | empty, `announced:ID` or `unannounced:ID` | its id (`announced:ID` or `ID`) |
//! | `announced_s` | empty | when the app announced it (default: before the trace) |
//!
//! ```text
//! kind,start_s,duration_s,executions,games,burst,announced_s
//! game,12.5,900,31,,,
//! reservation,36000,60,,300,announced:t1,33600
//! game,36000.8,1240,40,,announced:t1,
//! game,47000.1,610,22,,unannounced:t2,
//! ```
//!
//! A game's executions are spread evenly over its life. The simulator learns of a reservation
//! only at `announced_s`, as the pool would from `POST /v1/pool/reservations`.

use std::fmt::Write as _;

use super::SimError;

/// Which burst a game belongs to, if any: waits are reported apart for unannounced bursts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Burst {
    None,
    Announced(String),
    Unannounced(String),
}

impl Burst {
    fn parse(text: &str) -> Result<Burst, String> {
        if text.is_empty() {
            return Ok(Burst::None);
        }
        match text.split_once(':') {
            Some(("announced", id)) if !id.is_empty() => Ok(Burst::Announced(id.to_string())),
            Some(("unannounced", id)) if !id.is_empty() => Ok(Burst::Unannounced(id.to_string())),
            _ => Err(format!(
                "burst {text:?}: expected empty, announced:ID or unannounced:ID"
            )),
        }
    }

    fn to_field(&self) -> String {
        match self {
            Burst::None => String::new(),
            Burst::Announced(id) => format!("announced:{id}"),
            Burst::Unannounced(id) => format!("unannounced:{id}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TraceGame {
    pub start_s: f64,
    pub duration_s: f64,
    pub executions: u32,
    pub burst: Burst,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TraceReservation {
    pub id: String,
    pub start_s: f64,
    pub duration_s: f64,
    pub games: u32,
    /// When the pool learns of it; `None`: before the trace starts.
    pub announced_s: Option<f64>,
}

/// Games sorted by start (stable: equal starts keep their file order), and reservations.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Trace {
    pub games: Vec<TraceGame>,
    pub reservations: Vec<TraceReservation>,
}

const COLUMNS: [&str; 7] = [
    "kind",
    "start_s",
    "duration_s",
    "executions",
    "games",
    "burst",
    "announced_s",
];

impl Trace {
    /// Reads a trace (see the module doc for the format). Errors name the line.
    pub fn parse(text: &str) -> Result<Trace, SimError> {
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim()))
            .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
        let Some((header_line, header)) = lines.next() else {
            return Err(SimError::trace(0, "empty trace: expected a header line"));
        };
        let names: Vec<&str> = header.split(',').map(str::trim).collect();
        let mut index = [None; COLUMNS.len()];
        for (pos, name) in names.iter().enumerate() {
            match COLUMNS.iter().position(|c| c == name) {
                Some(c) => index[c] = Some(pos),
                None => {
                    return Err(SimError::trace(
                        header_line,
                        format!("unknown column {name:?}; known: {}", COLUMNS.join(", ")),
                    ))
                }
            }
        }
        for required in ["start_s", "duration_s"] {
            if !names.contains(&required) {
                return Err(SimError::trace(
                    header_line,
                    format!("the header lacks the column {required:?}"),
                ));
            }
        }

        let mut trace = Trace::default();
        for (line, row) in lines {
            let fields: Vec<&str> = row.split(',').map(str::trim).collect();
            if fields.len() != names.len() {
                return Err(SimError::trace(
                    line,
                    format!("{} fields, the header has {}", fields.len(), names.len()),
                ));
            }
            let field = |column: &str| -> &str {
                let c = COLUMNS.iter().position(|c| *c == column).unwrap_or(0);
                index[c].map(|i| fields[i]).unwrap_or("")
            };
            let err = |message: String| SimError::trace(line, message);
            let number = |column: &str| -> Result<f64, SimError> {
                let text = field(column);
                match text.parse::<f64>() {
                    Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
                    _ => Err(err(format!(
                        "{column} {text:?}: expected a number of seconds >= 0"
                    ))),
                }
            };
            let count = |column: &str| -> Result<Option<u32>, SimError> {
                let text = field(column);
                if text.is_empty() {
                    return Ok(None);
                }
                text.parse::<u32>()
                    .map(Some)
                    .map_err(|_| err(format!("{column} {text:?}: expected a whole number")))
            };
            let start_s = number("start_s")?;
            let duration_s = number("duration_s")?;
            if duration_s <= 0.0 {
                return Err(err("duration_s must be > 0".into()));
            }
            match field("kind") {
                "" | "game" => {
                    let burst = Burst::parse(field("burst")).map_err(err)?;
                    trace.games.push(TraceGame {
                        start_s,
                        duration_s,
                        executions: count("executions")?.unwrap_or(0),
                        burst,
                    });
                }
                "reservation" => {
                    let games = count("games")?
                        .ok_or_else(|| err("a reservation needs its number of games".into()))?;
                    let burst = field("burst");
                    let id = burst.strip_prefix("announced:").unwrap_or(burst);
                    let announced_s = if field("announced_s").is_empty() {
                        None
                    } else {
                        Some(number("announced_s")?)
                    };
                    trace.reservations.push(TraceReservation {
                        id: if id.is_empty() {
                            format!("r{line}")
                        } else {
                            id.to_string()
                        },
                        start_s,
                        duration_s,
                        games,
                        announced_s,
                    });
                }
                other => return Err(err(format!("kind {other:?}: expected game or reservation"))),
            }
        }
        trace.games.sort_by(|a, b| a.start_s.total_cmp(&b.start_s));
        Ok(trace)
    }

    /// The trace as CSV with every column, reservations first.
    pub fn to_csv(&self) -> String {
        let mut out = String::with_capacity(40 * (self.games.len() + 1));
        out.push_str(&COLUMNS.join(","));
        out.push('\n');
        for r in &self.reservations {
            let announced = r.announced_s.map(|a| format!("{a:.3}")).unwrap_or_default();
            let _ = writeln!(
                out,
                "reservation,{:.3},{:.3},,{},announced:{},{announced}",
                r.start_s, r.duration_s, r.games, r.id
            );
        }
        for g in &self.games {
            let _ = writeln!(
                out,
                "game,{:.3},{:.3},{},,{},",
                g.start_s,
                g.duration_s,
                g.executions,
                g.burst.to_field()
            );
        }
        out
    }

    /// When the last game ends (0 for no game).
    pub fn end_s(&self) -> f64 {
        self.games
            .iter()
            .map(|g| g.start_s + g.duration_s)
            .fold(0.0, f64::max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_round_trips_through_csv() {
        let text = "kind,start_s,duration_s,executions,games,burst,announced_s\n\
                    reservation,100,60,,3,announced:t1,10\n\
                    game,5,30,2,,,\n\
                    game,1.5,10,0,,unannounced:u,\n\
                    game,100.25,600,9,,announced:t1,\n";
        let trace = Trace::parse(text).unwrap();
        assert_eq!(trace.games.len(), 3);
        assert_eq!(trace.games[0].start_s, 1.5, "sorted by start");
        assert_eq!(trace.games[0].burst, Burst::Unannounced("u".into()));
        assert_eq!(
            trace.reservations,
            vec![TraceReservation {
                id: "t1".into(),
                start_s: 100.0,
                duration_s: 60.0,
                games: 3,
                announced_s: Some(10.0),
            }]
        );
        assert_eq!(Trace::parse(&trace.to_csv()).unwrap(), trace);
        assert_eq!(trace.end_s(), 700.25);
    }

    #[test]
    fn the_short_header_of_games_alone_is_accepted() {
        let trace =
            Trace::parse("start_s,duration_s,executions\n0,60,3\n\n# note\n2,60,1\n").unwrap();
        assert_eq!(trace.games.len(), 2);
        assert!(trace.reservations.is_empty());
        assert_eq!(trace.games[1].executions, 1);
    }

    #[test]
    fn errors_name_the_line_and_the_problem() {
        let cases = [
            ("", "empty trace"),
            ("start_s,duration_s,colour\n", "unknown column \"colour\""),
            ("start_s\n", "lacks the column \"duration_s\""),
            (
                "start_s,duration_s\n0,60\n-1,60\n",
                "line 3: start_s \"-1\"",
            ),
            ("start_s,duration_s\n0\n", "line 2: 1 fields"),
            ("start_s,duration_s\n0,0\n", "duration_s must be > 0"),
            (
                "start_s,duration_s,burst\n0,5,surprise\n",
                "burst \"surprise\"",
            ),
            (
                "kind,start_s,duration_s\nreservation,0,60\n",
                "number of games",
            ),
            ("kind,start_s,duration_s\nvm,0,60\n", "kind \"vm\""),
        ];
        for (text, want) in cases {
            let got = Trace::parse(text).unwrap_err().to_string();
            assert!(got.contains(want), "{text:?}: {got}");
        }
    }
}
