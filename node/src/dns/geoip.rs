//! The geo database: MaxMind-format city databases in either of the two
//! layouts the free sources use.
//!
//! - Standard (GeoLite2 City, DB-IP City Lite): one file for IPv4 and
//!   IPv6, coordinates at `location.latitude` / `location.longitude`.
//! - Flat (`@ip-location-db/*-mmdb`): top-level `latitude` / `longitude`,
//!   often 32-bit floats, one file per address family.
//!
//! Installed files live in `DATA_DIR/geoip/` as `v4.mmdb` (IPv4 only)
//! and `v6.mmdb` (IPv6, and IPv4 too unless `v4.mmdb` exists).

use std::{
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    time::SystemTime,
};

use maxminddb::{MaxMindDbError, PathElement, Reader};
use serde::Deserialize;

/// Where the geo database puts an address (`None`: nowhere), and how many
/// leading bits of the address decided that: the prefix length of the
/// database's network holding it, which a reply gives as its ECS scope.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Place {
    pub at: Option<(f64, f64)>,
    pub prefix: u8,
}

/// The folder under the data directory.
pub const GEOIP_DIR: &str = "geoip";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GeoError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a MaxMind database: {source}")]
    Format {
        path: PathBuf,
        source: MaxMindDbError,
    },
    #[error(
        "{path} has no coordinates (neither location.latitude nor latitude) in its first {checked} networks: not a city database"
    )]
    NoCoordinates { path: PathBuf, checked: usize },
    #[error("cannot install into {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where a database keeps its coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Standard,
    Flat,
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layout::Standard => "standard",
            Layout::Flat => "flat",
        })
    }
}

const STANDARD_LAT: [PathElement<'static>; 2] =
    [PathElement::Key("location"), PathElement::Key("latitude")];
const STANDARD_LON: [PathElement<'static>; 2] =
    [PathElement::Key("location"), PathElement::Key("longitude")];
const FLAT_LAT: [PathElement<'static>; 1] = [PathElement::Key("latitude")];
const FLAT_LON: [PathElement<'static>; 1] = [PathElement::Key("longitude")];

/// A coordinate stored as a double, a float, or (in odd files) an integer.
struct Degrees(f64);

impl<'de> Deserialize<'de> for Degrees {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Degrees;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a coordinate in degrees")
            }
            fn visit_f64<E>(self, v: f64) -> Result<Degrees, E> {
                Ok(Degrees(v))
            }
            fn visit_f32<E>(self, v: f32) -> Result<Degrees, E> {
                Ok(Degrees(f64::from(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Degrees, E> {
                Ok(Degrees(v as f64))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Degrees, E> {
                Ok(Degrees(v as f64))
            }
        }
        d.deserialize_any(V)
    }
}

/// One database file, checked.
#[derive(Debug)]
pub struct Db {
    reader: Reader<Vec<u8>>,
    layout: Layout,
}

impl Db {
    /// Reads and checks `bytes`: a MaxMind database whose networks carry
    /// coordinates in one of the two layouts.
    pub fn check(path: &Path, bytes: Vec<u8>) -> Result<Self, GeoError> {
        let format = |source| GeoError::Format {
            path: path.to_owned(),
            source,
        };
        // Not `Reader::verify`: it refuses files for cosmetic metadata
        // (an empty description), which real sources may have.
        let reader = Reader::from_source(bytes).map_err(format)?;
        // The first networks with data tell the layout.
        const CHECKED: usize = 64;
        let mut layout = None;
        let networks = reader
            .networks(Default::default())
            .map_err(format)?
            .take(CHECKED);
        for found in networks {
            let found = found.map_err(format)?;
            if coords(&found, Layout::Standard).is_some() {
                layout = Some(Layout::Standard);
                break;
            }
            if coords(&found, Layout::Flat).is_some() {
                layout = Some(Layout::Flat);
                break;
            }
        }
        let layout = layout.ok_or_else(|| GeoError::NoCoordinates {
            path: path.to_owned(),
            checked: CHECKED,
        })?;
        Ok(Self { reader, layout })
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Whether it has IPv6 networks (its tree is 128 bits deep).
    pub fn has_v6(&self) -> bool {
        self.reader.metadata().ip_version == 6
    }

    pub fn kind(&self) -> &str {
        &self.reader.metadata().database_type
    }

    fn locate(&self, ip: IpAddr) -> Option<Place> {
        let found = self.reader.lookup(ip).ok()?;
        let prefix = found.network().ok()?.prefix();
        Some(Place {
            at: coords(&found, self.layout),
            prefix,
        })
    }
}

fn coords<S: AsRef<[u8]>>(
    found: &maxminddb::LookupResult<'_, S>,
    layout: Layout,
) -> Option<(f64, f64)> {
    let (lat, lon): (&[PathElement<'_>], &[PathElement<'_>]) = match layout {
        Layout::Standard => (&STANDARD_LAT, &STANDARD_LON),
        Layout::Flat => (&FLAT_LAT, &FLAT_LON),
    };
    let lat = found.decode_path::<Degrees>(lat).ok()??.0;
    let lon = found.decode_path::<Degrees>(lon).ok()??.0;
    ((-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon)).then_some((lat, lon))
}

/// The installed databases.
#[derive(Debug)]
pub struct GeoDb {
    v4: Option<Db>,
    v6: Option<Db>,
    /// The files' modification times when read: a changed one is read again.
    pub stamp: Vec<Option<SystemTime>>,
}

impl GeoDb {
    /// The files under `DATA_DIR/geoip/` and when they last changed.
    pub fn stamp(data_dir: &Path) -> Vec<Option<SystemTime>> {
        ["v4.mmdb", "v6.mmdb"]
            .iter()
            .map(|f| {
                std::fs::metadata(data_dir.join(GEOIP_DIR).join(f))
                    .and_then(|m| m.modified())
                    .ok()
            })
            .collect()
    }

    /// Reads what is installed; `None` when nothing is.
    pub fn load(data_dir: &Path) -> Result<Option<Self>, GeoError> {
        let stamp = Self::stamp(data_dir);
        let read = |name: &str| -> Result<Option<Db>, GeoError> {
            let path = data_dir.join(GEOIP_DIR).join(name);
            match std::fs::read(&path) {
                Ok(bytes) => Db::check(&path, bytes).map(Some),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(GeoError::Read { path, source }),
            }
        };
        let (v4, v6) = (read("v4.mmdb")?, read("v6.mmdb")?);
        if v4.is_none() && v6.is_none() {
            return Ok(None);
        }
        Ok(Some(Self { v4, v6, stamp }))
    }

    /// Where `ip` is. `None` only when no installed file covers its
    /// family; an address a file does not place is `Place { at: None }`.
    pub fn locate(&self, ip: IpAddr) -> Option<Place> {
        let db = match ip {
            IpAddr::V4(_) => self.v4.as_ref().or(self.v6.as_ref()),
            IpAddr::V6(_) => self.v6.as_ref(),
        }?;
        db.locate(ip)
    }
}

/// What [`install`] put where.
#[derive(Debug)]
pub struct Installed {
    pub path: PathBuf,
    pub layout: Layout,
    pub kind: String,
}

/// Checks the database at `from` and installs it as `v6.mmdb` (a file
/// with IPv6 networks) or `v4.mmdb`. The old file is replaced in one
/// rename, so a running node reads either the old or the new one.
pub fn install(data_dir: &Path, from: &Path) -> Result<Installed, GeoError> {
    let bytes = std::fs::read(from).map_err(|source| GeoError::Read {
        path: from.to_owned(),
        source,
    })?;
    install_bytes(data_dir, from, bytes)
}

/// [`install`] of a database already read (downloaded); `from` names it
/// in errors.
pub fn install_bytes(data_dir: &Path, from: &Path, bytes: Vec<u8>) -> Result<Installed, GeoError> {
    let dir = data_dir.join(GEOIP_DIR);
    let write = |path: &Path, source| GeoError::Write {
        path: path.to_owned(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(|e| write(&dir, e))?;
    // Written aside first, so the checked copy is the only one in memory
    // (a database is up to 1 GiB); a file that fails the check is removed.
    let tmp = dir.join("incoming.mmdb.new");
    std::fs::write(&tmp, &bytes).map_err(|e| write(&tmp, e))?;
    let checked = check_whole(from, bytes);
    let db = match checked {
        Ok(db) => db,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    let path = dir.join(if db.has_v6() { "v6.mmdb" } else { "v4.mmdb" });
    std::fs::rename(&tmp, &path).map_err(|e| write(&path, e))?;
    Ok(Installed {
        path,
        layout: db.layout(),
        kind: db.kind().to_owned(),
    })
}

/// The database in `bytes`, every branch of its tree read once, so a
/// corrupt file fails here rather than at lookups.
fn check_whole(from: &Path, bytes: Vec<u8>) -> Result<Db, GeoError> {
    let db = Db::check(from, bytes)?;
    let format = |source| GeoError::Format {
        path: from.to_owned(),
        source,
    };
    for network in db.reader.networks(Default::default()).map_err(format)? {
        network.map_err(format)?;
    }
    Ok(db)
}

#[cfg(test)]
pub(crate) mod tests {
    use mmdb_writer::{Value, Writer};

    use super::*;

    /// A database placing 10.1.0.0/16 in Frankfurt and 10.2.0.0/16 in
    /// New York, 2001:db8:1::/48 in Sydney; flat layouts store f32.
    pub fn database(layout: Layout, v6: bool) -> Vec<u8> {
        let mut w = if v6 {
            Writer::new("Test-City")
        } else {
            Writer::builder("Test-City")
                .ip_version(mmdb_writer::IpVersion::V4)
                .build()
        };
        let entry = |lat: f64, lon: f64| match layout {
            Layout::Standard => Value::map([(
                "location",
                Value::map([
                    ("latitude", Value::Double(lat)),
                    ("longitude", Value::Double(lon)),
                ]),
            )]),
            Layout::Flat => Value::map([
                ("latitude", Value::Float(lat as f32)),
                ("longitude", Value::Float(lon as f32)),
                ("city", Value::from("somewhere")),
            ]),
        };
        let put = |w: &mut Writer, net: &str, v: Value| {
            w.insert_value(net.parse::<ipnet::IpNet>().expect("net"), v)
                .expect("insert");
        };
        put(&mut w, "10.1.0.0/16", entry(50.11, 8.68));
        put(&mut w, "10.2.0.0/16", entry(40.71, -74.01));
        if v6 {
            put(&mut w, "2001:db8:1::/48", entry(-33.87, 151.21));
        }
        w.to_bytes().expect("a database")
    }

    #[test]
    fn both_layouts_place_addresses() -> Result<(), Box<dyn std::error::Error>> {
        for layout in [Layout::Standard, Layout::Flat] {
            let dir = tempfile::tempdir()?;
            let file = dir.path().join("db.mmdb");
            std::fs::write(&file, database(layout, true))?;
            let got = install(dir.path(), &file)?;
            assert_eq!(got.layout, layout);
            let db = GeoDb::load(dir.path())?.ok_or("installed")?;
            let fra = db.locate("10.1.2.3".parse()?).ok_or("v4 covered")?;
            let (lat, lon) = fra.at.ok_or("placed")?;
            assert!((lat - 50.11).abs() < 1e-4 && (lon - 8.68).abs() < 1e-4);
            assert_eq!(fra.prefix, 16);
            let syd = db.locate("2001:db8:1::5".parse()?).ok_or("v6 covered")?;
            assert!(syd.at.is_some_and(|(lat, _)| lat < -33.0));
            assert_eq!(syd.prefix, 48);
            // Known to the file, not placed by it.
            let none = db.locate("192.0.2.1".parse()?).ok_or("covered")?;
            assert_eq!(none.at, None);
        }
        Ok(())
    }

    #[test]
    fn flat_files_per_family() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("v4only.mmdb");
        std::fs::write(&file, database(Layout::Flat, false))?;
        let got = install(dir.path(), &file)?;
        assert!(got.path.ends_with("geoip/v4.mmdb"), "{got:?}");
        let db = GeoDb::load(dir.path())?.ok_or("installed")?;
        assert!(
            db.locate("10.2.0.1".parse()?)
                .is_some_and(|p| p.at.is_some())
        );
        // No IPv6 file: IPv6 visitors are not placed at all.
        assert!(db.locate("2001:db8:1::1".parse()?).is_none());
        Ok(())
    }

    #[test]
    fn what_is_not_a_city_database_is_refused_and_nothing_installed()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let junk = dir.path().join("junk.mmdb");
        std::fs::write(&junk, b"not a database at all")?;
        let err = install(dir.path(), &junk).expect_err("junk");
        assert!(matches!(err, GeoError::Format { .. }), "{err}");
        // A valid MaxMind file without coordinates (an ASN database).
        let mut w = Writer::new("Test-ASN");
        w.insert_value(
            "10.0.0.0/8".parse::<ipnet::IpNet>()?,
            Value::map([("autonomous_system_number", Value::U32(64512))]),
        )?;
        let asn = dir.path().join("asn.mmdb");
        std::fs::write(&asn, w.to_bytes()?)?;
        let err = install(dir.path(), &asn).expect_err("no coordinates");
        assert!(matches!(err, GeoError::NoCoordinates { .. }), "{err}");
        assert!(GeoDb::load(dir.path())?.is_none());
        // A cut file.
        let mut cut = database(Layout::Standard, true);
        cut.truncate(cut.len() / 2);
        let cut_file = dir.path().join("cut.mmdb");
        std::fs::write(&cut_file, cut)?;
        assert!(install(dir.path(), &cut_file).is_err());
        // Nothing left behind by the refusals, not even the copy aside.
        let left: Vec<_> = std::fs::read_dir(dir.path().join(GEOIP_DIR))?.collect();
        assert!(left.is_empty(), "{left:?}");
        Ok(())
    }
}
