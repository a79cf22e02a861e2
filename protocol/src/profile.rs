//! Priority tiers, device and network profiles, and the choices they drive: how long a cached
//! value lives when the caller gives no TTL, and how a value or a request body is compressed.
//!
//! Both the device and the server apply these, so a phone on slow cellular gets the same TTL from
//! its local cache as from the server's L2 cache.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Values and bodies larger than this many bytes are compressed (when it helps).
pub const COMPRESSION_THRESHOLD: usize = 1024;

/// Upload priority. Lower number = more important = synced first and more often.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
#[repr(u8)]
pub enum Tier {
    /// Critical user data: synced every minute, fresh for 5 minutes.
    Critical = 1,
    /// User preferences: every 5 minutes, fresh for 30 minutes.
    Preferences = 2,
    /// Application data: every 15 minutes, fresh for an hour.
    Application = 3,
    /// Background data: hourly, fresh for two hours.
    Background = 4,
}

/// One row of the tier table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TierInfo {
    pub tier: Tier,
    pub meaning: &'static str,
    /// How long a value of this tier is considered fresh.
    pub freshness_ttl: Duration,
    /// How often the tier is synced on a network that allows it.
    pub cadence: Duration,
}

/// The tier table, in priority order.
pub const TIERS: [TierInfo; 4] = [
    TierInfo {
        tier: Tier::Critical,
        meaning: "critical user data",
        freshness_ttl: Duration::from_secs(5 * 60),
        cadence: Duration::from_secs(60),
    },
    TierInfo {
        tier: Tier::Preferences,
        meaning: "user preferences",
        freshness_ttl: Duration::from_secs(30 * 60),
        cadence: Duration::from_secs(5 * 60),
    },
    TierInfo {
        tier: Tier::Application,
        meaning: "application data",
        freshness_ttl: Duration::from_secs(60 * 60),
        cadence: Duration::from_secs(15 * 60),
    },
    TierInfo {
        tier: Tier::Background,
        meaning: "background data",
        freshness_ttl: Duration::from_secs(2 * 60 * 60),
        cadence: Duration::from_secs(60 * 60),
    },
];

/// A number that is not a tier (tiers are 1 to 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid tier {0}: tiers are 1 (critical) to 4 (background)")]
pub struct InvalidTier(pub u8);

impl Tier {
    pub const ALL: [Tier; 4] = [
        Tier::Critical,
        Tier::Preferences,
        Tier::Application,
        Tier::Background,
    ];

    pub fn info(self) -> &'static TierInfo {
        // Discriminants are 1..=4, so the index is 0..=3.
        &TIERS[usize::from(self as u8 - 1)]
    }

    pub fn number(self) -> u8 {
        self as u8
    }

    pub fn cadence(self) -> Duration {
        self.info().cadence
    }

    pub fn freshness_ttl(self) -> Duration {
        self.info().freshness_ttl
    }
}

impl TryFrom<u8> for Tier {
    type Error = InvalidTier;
    fn try_from(n: u8) -> Result<Self, Self::Error> {
        match n {
            1 => Ok(Self::Critical),
            2 => Ok(Self::Preferences),
            3 => Ok(Self::Application),
            4 => Ok(Self::Background),
            other => Err(InvalidTier(other)),
        }
    }
}

impl From<Tier> for u8 {
    fn from(t: Tier) -> u8 {
        t as u8
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tier {}", self.number())
    }
}

/// The kind of device the agent runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceClass {
    Phone,
    Tablet,
    Desktop,
}

/// The kind of network the device is on right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NetworkClass {
    Offline,
    CellularSlow,
    CellularFast,
    /// Wi-Fi or wired Ethernet.
    Wifi,
}

/// The network and whether traffic on it costs the user money.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NetworkProfile {
    pub class: NetworkClass,
    pub metered: bool,
}

impl NetworkProfile {
    pub const OFFLINE: Self = Self {
        class: NetworkClass::Offline,
        metered: false,
    };
    pub const WIFI: Self = Self {
        class: NetworkClass::Wifi,
        metered: false,
    };
}

/// Device and network together: what adaptive decisions are made from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DeviceProfile {
    pub device: DeviceClass,
    pub network: NetworkProfile,
}

impl DeviceProfile {
    /// A device on an unmetered network of the given class.
    pub const fn new(device: DeviceClass, class: NetworkClass) -> Self {
        Self {
            device,
            network: NetworkProfile {
                class,
                metered: false,
            },
        }
    }
}

impl Default for DeviceProfile {
    fn default() -> Self {
        Self {
            device: DeviceClass::Phone,
            network: NetworkProfile::WIFI,
        }
    }
}

/// TTL for a cached value when the caller gives none.
///
/// Phones on slow links keep values longest (a refetch is expensive and often impossible);
/// desktops on fast links keep them shortest (a refetch is cheap, freshness is worth more).
/// An offline phone keeps the slow-link TTL: it cannot refetch at all.
pub fn adaptive_ttl(profile: DeviceProfile) -> Duration {
    let secs = match (profile.device, profile.network.class) {
        (DeviceClass::Phone, NetworkClass::CellularSlow | NetworkClass::Offline) => 3600,
        (DeviceClass::Phone, NetworkClass::CellularFast | NetworkClass::Wifi) => 1800,
        (DeviceClass::Tablet, _) => 1200,
        (DeviceClass::Desktop, _) => 900,
    };
    Duration::from_secs(secs)
}

/// The TTL of a value cached without an explicit one: the device-adaptive TTL in a
/// mobile-optimized namespace, the namespace table's TTL in the others (configuration, file
/// metadata, backup status: values whose freshness does not depend on the device's network).
pub fn default_ttl(namespace: crate::Namespace, profile: DeviceProfile) -> Duration {
    if namespace.mobile_optimized() {
        adaptive_ttl(profile)
    } else {
        namespace.default_ttl()
    }
}

/// How a value or body is encoded, stored and sent beside it as an explicit tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// Not compressed.
    #[default]
    Identity,
    /// gzip (RFC 1952): fewest bytes, used on phones and tablets where the radio is the cost.
    Gzip,
    /// LZ4 block with a little-endian `u32` length prefix: cheapest CPU, used on desktops.
    Lz4,
}

impl Encoding {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Identity => "identity",
            Self::Gzip => "gzip",
            Self::Lz4 => "lz4",
        }
    }

    /// Stable small integer for storage columns.
    pub fn tag(self) -> u8 {
        match self {
            Self::Identity => 0,
            Self::Gzip => 1,
            Self::Lz4 => 2,
        }
    }

    pub fn from_tag(tag: u8) -> Option<Self> {
        match tag {
            0 => Some(Self::Identity),
            1 => Some(Self::Gzip),
            2 => Some(Self::Lz4),
            _ => None,
        }
    }
}

/// A string that is not the name of an [`Encoding`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown encoding {0:?}: expected identity, gzip or lz4")]
pub struct UnknownEncoding(pub String);

impl FromStr for Encoding {
    type Err = UnknownEncoding;
    /// Parses the exact name [`Encoding::as_str`] gives (and serde uses), as stored in a text
    /// column or a stream field. HTTP headers, which are case-insensitive and have aliases, go
    /// through [`crate::codec::content_encoding`] instead.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "identity" => Ok(Self::Identity),
            "gzip" => Ok(Self::Gzip),
            "lz4" => Ok(Self::Lz4),
            other => Err(UnknownEncoding(other.to_owned())),
        }
    }
}

impl DeviceClass {
    /// The compression a device of this class uses for values above the threshold.
    pub fn compression(self) -> Encoding {
        match self {
            Self::Phone | Self::Tablet => Encoding::Gzip,
            Self::Desktop => Encoding::Lz4,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Phone => "phone",
            Self::Tablet => "tablet",
            Self::Desktop => "desktop",
        }
    }
}

impl NetworkClass {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Offline => "offline",
            Self::CellularSlow => "cellular-slow",
            Self::CellularFast => "cellular-fast",
            Self::Wifi => "wifi",
        }
    }
}

/// A device-profile header value that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid device profile {0:?}: expected `device;network[;metered]`, e.g. `phone;cellular-slow`"
)]
pub struct InvalidProfile(pub String);

impl fmt::Display for DeviceProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{};{}",
            self.device.as_str(),
            self.network.class.as_str()
        )?;
        if self.network.metered {
            f.write_str(";metered")?;
        }
        Ok(())
    }
}

impl FromStr for DeviceProfile {
    type Err = InvalidProfile;
    /// Parses the `Kryonix-Device-Profile` header: `phone;cellular-slow`, `desktop;wifi;metered`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || InvalidProfile(s.to_owned());
        let mut parts = s.split(';').map(str::trim);
        let device = match parts.next() {
            Some("phone") => DeviceClass::Phone,
            Some("tablet") => DeviceClass::Tablet,
            Some("desktop") => DeviceClass::Desktop,
            _ => return Err(bad()),
        };
        let class = match parts.next() {
            Some("offline") => NetworkClass::Offline,
            Some("cellular-slow") => NetworkClass::CellularSlow,
            Some("cellular-fast") => NetworkClass::CellularFast,
            Some("wifi") | Some("ethernet") => NetworkClass::Wifi,
            _ => return Err(bad()),
        };
        let metered = match parts.next() {
            None => false,
            Some("metered") => true,
            Some(_) => return Err(bad()),
        };
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Self {
            device,
            network: NetworkProfile { class, metered },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(device: DeviceClass, class: NetworkClass) -> DeviceProfile {
        DeviceProfile::new(device, class)
    }

    #[test]
    fn adaptive_ttl_table() {
        use DeviceClass::*;
        use NetworkClass::*;
        assert_eq!(adaptive_ttl(profile(Phone, CellularSlow)).as_secs(), 3600);
        assert_eq!(adaptive_ttl(profile(Phone, Offline)).as_secs(), 3600);
        assert_eq!(adaptive_ttl(profile(Phone, CellularFast)).as_secs(), 1800);
        assert_eq!(adaptive_ttl(profile(Phone, Wifi)).as_secs(), 1800);
        for net in [Offline, CellularSlow, CellularFast, Wifi] {
            assert_eq!(adaptive_ttl(profile(Tablet, net)).as_secs(), 1200);
            assert_eq!(adaptive_ttl(profile(Desktop, net)).as_secs(), 900);
        }
    }

    #[test]
    fn tier_table() {
        let cadences: Vec<u64> = Tier::ALL.iter().map(|t| t.cadence().as_secs()).collect();
        assert_eq!(cadences, [60, 300, 900, 3600]);
        let fresh: Vec<u64> = Tier::ALL
            .iter()
            .map(|t| t.freshness_ttl().as_secs())
            .collect();
        assert_eq!(fresh, [300, 1800, 3600, 7200]);
        assert_eq!(Tier::try_from(0), Err(InvalidTier(0)));
        assert_eq!(Tier::try_from(5), Err(InvalidTier(5)));
        assert!(Tier::Critical < Tier::Background);
    }

    #[test]
    fn compression_by_device() {
        assert_eq!(DeviceClass::Phone.compression(), Encoding::Gzip);
        assert_eq!(DeviceClass::Tablet.compression(), Encoding::Gzip);
        assert_eq!(DeviceClass::Desktop.compression(), Encoding::Lz4);
        for e in [Encoding::Identity, Encoding::Gzip, Encoding::Lz4] {
            assert_eq!(Encoding::from_tag(e.tag()), Some(e));
        }
        assert_eq!(Encoding::from_tag(9), None);
    }

    #[test]
    fn encoding_names_round_trip() {
        for e in [Encoding::Identity, Encoding::Gzip, Encoding::Lz4] {
            assert_eq!(e.as_str().parse::<Encoding>(), Ok(e));
        }
        for bad in ["", "GZIP", "x-gzip", "br", " lz4"] {
            assert_eq!(
                bad.parse::<Encoding>(),
                Err(UnknownEncoding(bad.to_owned())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn profile_header_round_trip() {
        let p: DeviceProfile = "desktop;wifi;metered".parse().unwrap();
        assert_eq!(p.device, DeviceClass::Desktop);
        assert!(p.network.metered);
        assert_eq!(p.to_string(), "desktop;wifi;metered");
        assert_eq!(
            "phone; cellular-slow"
                .parse::<DeviceProfile>()
                .unwrap()
                .to_string(),
            "phone;cellular-slow"
        );
        for bad in [
            "",
            "phone",
            "watch;wifi",
            "phone;5g",
            "phone;wifi;free",
            "phone;wifi;metered;x",
        ] {
            assert!(bad.parse::<DeviceProfile>().is_err(), "{bad}");
        }
    }
}
