//! Writes a geo database for benchmarks and manual tests: 10.0.0.0/8 cut
//! into /16s spread over the globe, in the standard (GeoLite2 City)
//! layout, which both makiatto and gdnsd's geoip plugin read.
//!   usage: maki-geo-fixture OUT.mmdb

use anyhow::{Context, Result};
use mmdb_writer::{Value, Writer};

fn main() -> Result<()> {
    let out = std::env::args()
        .nth(1)
        .context("usage: maki-geo-fixture OUT.mmdb")?;
    let mut w = Writer::builder("GeoIP2-City")
        .description(&[("en", "Makiatto benchmark fixture")])
        .build();
    for b in 0..=255u32 {
        // A spiral of points over the globe, so each /16 has its own place.
        let lat = -60.0 + (b as f64 * 37.0) % 130.0;
        let lon = -180.0 + (b as f64 * 71.0) % 360.0;
        let net: ipnet::IpNet = format!("10.{b}.0.0/16").parse()?;
        let continent = if lon < -30.0 {
            "NA"
        } else if lon < 60.0 {
            "EU"
        } else {
            "AS"
        };
        w.insert_value(
            net,
            Value::map([
                (
                    "location",
                    Value::map([
                        ("latitude", Value::Double(lat)),
                        ("longitude", Value::Double(lon)),
                    ]),
                ),
                ("continent", Value::map([("code", Value::from(continent))])),
                ("country", Value::map([("iso_code", Value::from("ZZ"))])),
            ]),
        )?;
    }
    std::fs::write(&out, w.to_bytes()?)?;
    Ok(())
}
