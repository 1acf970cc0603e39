//! Field values: parsing from what an operator types, and the one canonical text form that
//! travels in a signed notification.
//!
//! Every typed value has exactly one canonical text (fixed-point decimals without trailing
//! zeros, UTC times to the second with a `Z`, lowercase hex), so a receiver can refuse any
//! value whose text is not the canonical form of what it parses to. No floats anywhere: a
//! coordinate is a whole number of micro-degrees.

use jiff::Timestamp;

/// Digits after the decimal point kept by decimals, coordinates and bearings.
pub const FRACTION_DIGITS_MAX: u32 = 6;
const SCALE: i64 = 1_000_000;
/// Vertices of one polygon.
pub const POLYGON_VERTICES_MAX: usize = 64;
/// Largest circle radius, in kilometres (half the Earth's circumference).
pub const RADIUS_KM_MAX: i64 = 20_000;
/// Longest duration, in seconds (one year).
pub const DURATION_SECONDS_MAX: u64 = 366 * 86_400;
/// Earliest and latest year a date-time may name.
pub const YEAR_MIN: i16 = 1970;
pub const YEAR_MAX: i16 = 9999;

/// A fixed-point number with six fraction digits: `units / 1_000_000`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fixed(pub i64);

impl Fixed {
    pub fn from_int(v: i64) -> Fixed {
        Fixed(v.saturating_mul(SCALE))
    }

    /// Parse `-12.345` (at most six fraction digits, no exponent, no '+').
    pub fn parse(text: &str) -> Result<Fixed, &'static str> {
        let (negative, digits) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (int_part, frac_part) = match digits.split_once('.') {
            Some((i, f)) => (i, Some(f)),
            None => (digits, None),
        };
        if int_part.is_empty() || !int_part.bytes().all(|b| b.is_ascii_digit()) {
            return Err("a decimal number such as 12.5");
        }
        if int_part.len() > 12 {
            return Err("a number of at most 12 integer digits");
        }
        let mut units: i64 = int_part.parse::<i64>().map_err(|_| "a decimal number")? * SCALE;
        if let Some(frac) = frac_part {
            if frac.is_empty() || !frac.bytes().all(|b| b.is_ascii_digit()) {
                return Err("a decimal number such as 12.5");
            }
            if frac.len() > FRACTION_DIGITS_MAX as usize {
                return Err("at most 6 digits after the decimal point");
            }
            let padded = format!("{frac:0<6}");
            units += padded.parse::<i64>().map_err(|_| "a decimal number")?;
        }
        Ok(Fixed(if negative { -units } else { units }))
    }

    /// The canonical text: no trailing fraction zeros, no "-0".
    pub fn canonical(self) -> String {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let int = abs / SCALE as u64;
        let frac = abs % SCALE as u64;
        if frac == 0 {
            format!("{sign}{int}")
        } else {
            let f = format!("{frac:06}");
            format!("{sign}{int}.{}", f.trim_end_matches('0'))
        }
    }
}

/// A point on the WGS-84 ellipsoid, in micro-degrees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GeoPoint {
    pub lat: Fixed,
    pub lon: Fixed,
}

impl GeoPoint {
    pub fn parse(text: &str) -> Result<GeoPoint, String> {
        let (lat, lon) = text
            .split_once(',')
            .ok_or("latitude,longitude in decimal degrees, such as 39.9,116.4")?;
        let lat = Fixed::parse(lat.trim()).map_err(|e| format!("latitude: {e}"))?;
        let lon = Fixed::parse(lon.trim()).map_err(|e| format!("longitude: {e}"))?;
        if lat.0.abs() > 90 * SCALE {
            return Err(format!(
                "latitude {} is outside -90..90 degrees",
                lat.canonical()
            ));
        }
        if lon.0.abs() > 180 * SCALE {
            return Err(format!(
                "longitude {} is outside -180..180 degrees",
                lon.canonical()
            ));
        }
        Ok(GeoPoint { lat, lon })
    }

    pub fn canonical(&self) -> String {
        format!("{},{}", self.lat.canonical(), self.lon.canonical())
    }
}

/// An area: a circle around a point, or a polygon of vertices (WGS-84).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum GeoArea {
    Circle { center: GeoPoint, radius_km: Fixed },
    Polygon(Vec<GeoPoint>),
}

impl GeoArea {
    pub fn parse(text: &str) -> Result<GeoArea, String> {
        const FORM: &str = "circle:LAT,LON,RADIUS_KM or polygon:LAT,LON;LAT,LON;LAT,LON...";
        if let Some(rest) = text.strip_prefix("circle:") {
            let (point, radius) = rest.rsplit_once(',').ok_or(FORM)?;
            let center = GeoPoint::parse(point)?;
            let radius_km = Fixed::parse(radius.trim()).map_err(|e| format!("radius: {e}"))?;
            if radius_km.0 <= 0 || radius_km.0 > RADIUS_KM_MAX * SCALE {
                return Err(format!(
                    "radius must be more than 0 and at most {RADIUS_KM_MAX} km"
                ));
            }
            Ok(GeoArea::Circle { center, radius_km })
        } else if let Some(rest) = text.strip_prefix("polygon:") {
            let vertices = rest
                .split(';')
                .map(GeoPoint::parse)
                .collect::<Result<Vec<_>, _>>()?;
            if vertices.len() < 3 || vertices.len() > POLYGON_VERTICES_MAX {
                return Err(format!(
                    "a polygon has 3 to {POLYGON_VERTICES_MAX} vertices"
                ));
            }
            Ok(GeoArea::Polygon(vertices))
        } else {
            Err(FORM.to_string())
        }
    }

    pub fn canonical(&self) -> String {
        match self {
            GeoArea::Circle { center, radius_km } => {
                format!("circle:{},{}", center.canonical(), radius_km.canonical())
            }
            GeoArea::Polygon(vertices) => {
                let points: Vec<String> = vertices.iter().map(GeoPoint::canonical).collect();
                format!("polygon:{}", points.join(";"))
            }
        }
    }
}

/// Parse a UTC date-time (RFC 3339; any offset is converted to UTC; whole seconds).
pub fn parse_datetime(text: &str) -> Result<Timestamp, String> {
    const FORM: &str = "an RFC 3339 date-time such as 2026-12-01T10:00:00Z";
    let ts: Timestamp = text.parse().map_err(|_| FORM.to_string())?;
    if ts.subsec_nanosecond() != 0 {
        return Err("whole seconds only".into());
    }
    let year = ts.to_zoned(jiff::tz::TimeZone::UTC).year();
    if !(YEAR_MIN..=YEAR_MAX).contains(&year) {
        return Err(format!("a year from {YEAR_MIN} to {YEAR_MAX}"));
    }
    Ok(ts)
}

pub fn canonical_datetime(ts: Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Parse a duration written like `1d2h30m15s` (units in that order, each at most once).
pub fn parse_duration(text: &str) -> Result<u64, String> {
    const FORM: &str = "a duration such as 90m, 2h30m or 1d";
    if text.is_empty() {
        return Err(FORM.into());
    }
    let mut total: u64 = 0;
    let mut number = String::new();
    let mut last_rank = 0;
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            if number.len() > 9 {
                return Err(FORM.into());
            }
            continue;
        }
        let (rank, seconds) = match c {
            'd' => (1, 86_400),
            'h' => (2, 3_600),
            'm' => (3, 60),
            's' => (4, 1),
            _ => return Err(FORM.into()),
        };
        if number.is_empty() || rank <= last_rank {
            return Err(FORM.into());
        }
        last_rank = rank;
        total += number.parse::<u64>().map_err(|_| FORM.to_string())? * seconds;
        number.clear();
    }
    if !number.is_empty() {
        return Err(FORM.into());
    }
    if total > DURATION_SECONDS_MAX {
        return Err("at most 366 days".into());
    }
    Ok(total)
}

pub fn canonical_duration(seconds: u64) -> String {
    if seconds == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    let mut rest = seconds;
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if rest >= size {
            out.push_str(&format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    out
}

/// Split a duration into days, hours, minutes, seconds for display.
pub fn duration_parts(seconds: u64) -> [u64; 4] {
    [
        seconds / 86_400,
        seconds % 86_400 / 3_600,
        seconds % 3_600 / 60,
        seconds % 60,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_canonical() {
        assert_eq!(Fixed::parse("12.500").unwrap().canonical(), "12.5");
        assert_eq!(Fixed::parse("-0.000001").unwrap().canonical(), "-0.000001");
        assert_eq!(Fixed::parse("-0").unwrap().canonical(), "0");
        assert!(Fixed::parse("1e5").is_err());
        assert!(Fixed::parse("+1").is_err());
        assert!(Fixed::parse("1.1234567").is_err());
        assert!(Fixed::parse(".5").is_err());
    }

    #[test]
    fn areas() {
        let a = GeoArea::parse("circle:39.90,116.4,50.0").unwrap();
        assert_eq!(a.canonical(), "circle:39.9,116.4,50");
        assert!(GeoArea::parse("circle:91,0,10").is_err());
        assert!(GeoArea::parse("polygon:1,1;2,2").is_err());
        assert!(GeoArea::parse("square:1,1").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90m").unwrap(), 5400);
        assert_eq!(canonical_duration(5400), "1h30m");
        assert!(parse_duration("30m2h").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("5").is_err());
    }

    #[test]
    fn datetimes() {
        let t = parse_datetime("2026-12-01T18:00:00+08:00").unwrap();
        assert_eq!(canonical_datetime(t), "2026-12-01T10:00:00Z");
        assert!(parse_datetime("2026-12-01T10:00:00.5Z").is_err());
        assert!(parse_datetime("2026-12-01 10:00").is_err());
    }
}
