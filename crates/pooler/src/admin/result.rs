//! Result sets as PgBouncer's console sends them: text format, with PgBouncer's
//! column types (int4, int8, text; timestamps as text).

use bytes::BytesMut;
use sluice_wire::backend::{self, oid};

/// One value of a row.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Text(String),
    Int(i64),
    Null,
}

impl From<&str> for Cell {
    fn from(s: &str) -> Cell {
        Cell::Text(s.to_owned())
    }
}
impl From<String> for Cell {
    fn from(s: String) -> Cell {
        Cell::Text(s)
    }
}
impl From<Option<String>> for Cell {
    fn from(s: Option<String>) -> Cell {
        s.map_or(Cell::Null, Cell::Text)
    }
}
macro_rules! int_cell {
    ($($t:ty),*) => {$(
        impl From<$t> for Cell {
            fn from(n: $t) -> Cell {
                Cell::Int(i64::try_from(n).unwrap_or(i64::MAX))
            }
        }
    )*};
}
int_cell!(i32, i64, u16, u32, u64, usize);
impl From<bool> for Cell {
    fn from(b: bool) -> Cell {
        Cell::Int(i64::from(b))
    }
}

/// Rows under named, typed columns. Types are given as PgBouncer writes them:
/// `s` text, `i` int4, `q` int8, `T` a timestamp (sent as text).
#[derive(Debug, Clone)]
pub struct ResultSet {
    pub columns: Vec<(&'static str, u8)>,
    pub rows: Vec<Vec<Cell>>,
}

impl ResultSet {
    /// `types` has one letter per column name.
    pub fn new(types: &str, names: &[&'static str]) -> ResultSet {
        debug_assert_eq!(types.len(), names.len(), "one type letter per column");
        ResultSet {
            columns: names.iter().copied().zip(types.bytes()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn push(&mut self, row: Vec<Cell>) {
        debug_assert_eq!(row.len(), self.columns.len(), "row width");
        self.rows.push(row);
    }

    /// The value of `column` in row `i` (tests, metrics).
    pub fn get(&self, i: usize, column: &str) -> Option<&Cell> {
        let c = self.columns.iter().position(|(n, _)| *n == column)?;
        self.rows.get(i)?.get(c)
    }

    pub fn write(&self, buf: &mut BytesMut) {
        let cols: Vec<(&str, u32)> = self
            .columns
            .iter()
            .map(|(n, t)| {
                let type_oid = match t {
                    b'i' => oid::INT4,
                    b'q' => oid::INT8,
                    _ => oid::TEXT,
                };
                (*n, type_oid)
            })
            .collect();
        backend::row_description(buf, &cols);
        let mut text: Vec<Option<String>> = Vec::with_capacity(cols.len());
        for row in &self.rows {
            text.clear();
            text.extend(row.iter().map(|c| match c {
                Cell::Text(s) => Some(s.clone()),
                Cell::Int(n) => Some(n.to_string()),
                Cell::Null => None,
            }));
            backend::data_row(buf, text.iter().map(|v| v.as_deref()));
        }
        backend::command_complete(buf, "SHOW");
    }
}

/// A timestamp as PgBouncer shows it: `YYYY-MM-DD HH:MM:SS UTC`.
pub fn timestamp(unix_micros: u64) -> Cell {
    if unix_micros == 0 {
        return Cell::Null;
    }
    let secs = unix_micros / 1_000_000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    Cell::Text(format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    ))
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        assert_eq!(timestamp(0), Cell::Null);
        assert_eq!(timestamp(1_000_000), Cell::Text("1970-01-01 00:00:01 UTC".into()));
        // 2026-11-24 10:11:12 UTC
        assert_eq!(
            timestamp(1_795_515_072 * 1_000_000),
            Cell::Text("2026-11-24 10:11:12 UTC".into())
        );
        assert_eq!(
            timestamp(951_782_400 * 1_000_000),
            Cell::Text("2000-02-29 00:00:00 UTC".into())
        );
    }
}
