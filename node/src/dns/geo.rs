//! Which nodes a visitor is sent to: the nearest by great-circle distance
//! to where the visitor's address is, as far as the geo database knows.

use std::net::IpAddr;

use super::zones::{Server, Settings};

/// Great-circle distance in kilometres between two points given in
/// degrees (haversine, mean Earth radius).
pub fn distance_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    const R: f64 = 6371.0;
    let (la1, lo1) = (a.0.to_radians(), a.1.to_radians());
    let (la2, lo2) = (b.0.to_radians(), b.1.to_radians());
    let h = ((la2 - la1) / 2.0).sin().powi(2)
        + la1.cos() * la2.cos() * ((lo2 - lo1) / 2.0).sin().powi(2);
    2.0 * R * h.sqrt().min(1.0).asin()
}

/// Up to `k` of `servers` with an address `usable`, nearest to `from`
/// first. Without `from` (an address the database does not place), the
/// nodes of the answering node's region come first, then the nearest to
/// it. Servers that rank the same take turns by `turn`, so equal nodes
/// share the visitors.
pub fn nearest<'a>(
    servers: &'a [Server],
    from: Option<(f64, f64)>,
    here: &Settings,
    usable: impl Fn(&IpAddr) -> bool,
    k: usize,
    turn: usize,
) -> Vec<&'a Server> {
    let n = servers.len().max(1);
    let mut ranked: Vec<(u8, f64, usize, &Server)> = servers
        .iter()
        .enumerate()
        .filter(|(_, s)| s.ips.iter().any(&usable))
        .map(|(i, s)| {
            let (class, km) = match (from, here.location, s.location) {
                (Some(f), _, Some(at)) => (0, distance_km(f, at)),
                (Some(_), _, None) => (1, 0.0),
                (None, _, _) if here.region.is_some() && s.region == here.region => {
                    match (here.location, s.location) {
                        (Some(h), Some(at)) => (0, distance_km(h, at)),
                        _ => (0, 0.0),
                    }
                }
                (None, Some(h), Some(at)) => (1, distance_km(h, at)),
                (None, _, _) => (2, 0.0),
            };
            (class, km, (i + n - turn % n) % n, s)
        })
        .collect();
    ranked.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)).then(a.2.cmp(&b.2)));
    ranked.into_iter().take(k).map(|(.., s)| s).collect()
}

#[cfg(test)]
mod tests {
    use maki_protocol::SecretKey;

    use super::*;

    fn server(seed: u8, at: Option<(f64, f64)>, region: Option<&str>) -> Server {
        Server {
            id: SecretKey::from_bytes(&[seed; 32]).public(),
            ips: vec![IpAddr::from([10, 0, 0, seed])],
            location: at,
            region: region.map(str::to_owned),
        }
    }

    const FRANKFURT: (f64, f64) = (50.11, 8.68);
    const NEW_YORK: (f64, f64) = (40.71, -74.01);
    const SYDNEY: (f64, f64) = (-33.87, 151.21);

    fn nowhere() -> Settings {
        Settings {
            ttl: 60,
            answers: 2,
            region: None,
            location: None,
        }
    }

    #[test]
    fn distances_are_great_circle_kilometres() {
        let d = distance_km(FRANKFURT, NEW_YORK);
        assert!((6180.0..6230.0).contains(&d), "{d}");
        assert!(distance_km(SYDNEY, SYDNEY) < 1e-9);
        // Antipodes: half the circumference, no NaN from rounding.
        let d = distance_km((0.0, 0.0), (0.0, 180.0));
        assert!((20010.0..20020.0).contains(&d), "{d}");
    }

    #[test]
    fn the_nearest_nodes_come_first() {
        let s = [
            server(1, Some(SYDNEY), None),
            server(2, Some(NEW_YORK), None),
            server(3, Some(FRANKFURT), None),
            server(4, None, None),
        ];
        let paris = (48.86, 2.35);
        let got = nearest(&s, Some(paris), &nowhere(), |_| true, 2, 0);
        assert_eq!(got, [&s[2], &s[1]]);
        // Whatever the turn: distance decides before turns do.
        let got = nearest(&s, Some(paris), &nowhere(), |_| true, 4, 3);
        assert_eq!(got, [&s[2], &s[1], &s[0], &s[3]]);
    }

    #[test]
    fn an_unplaced_visitor_gets_the_answering_nodes_region_first() {
        let s = [
            server(1, Some(SYDNEY), Some("ap")),
            server(2, Some(NEW_YORK), Some("us")),
            server(3, Some(FRANKFURT), Some("eu")),
        ];
        let here = Settings {
            region: Some("us".into()),
            location: Some(NEW_YORK),
            ..nowhere()
        };
        let got = nearest(&s, None, &here, |_| true, 2, 0);
        assert_eq!(got, [&s[1], &s[2]]);
    }

    #[test]
    fn equal_nodes_take_turns_and_unusable_ones_are_skipped() {
        let s = [
            server(1, None, None),
            server(2, None, None),
            server(3, None, None),
        ];
        let firsts: Vec<_> = (0..3)
            .map(|t| nearest(&s, None, &nowhere(), |_| true, 1, t)[0].id)
            .collect();
        assert_eq!(firsts.len(), 3);
        assert!(
            firsts
                .iter()
                .all(|f| firsts.iter().filter(|g| *g == f).count() == 1)
        );
        let got = nearest(
            &s,
            None,
            &nowhere(),
            |ip| *ip != IpAddr::from([10, 0, 0, 2]),
            3,
            0,
        );
        assert_eq!(got, [&s[0], &s[2]]);
    }
}
