//! The catalog's value types that `db` and `providers` share: the resources of a flavor a machine
//! is made of ([`FlavorSpec`]), a flavor as a provider's catalogue lists it ([`CatalogFlavor`]),
//! the names of the provider and region that always exist, and the provider configurations the
//! `providers:` section declares ([`DeclaredProviders`]). Plain data, no rules: `db::catalog`
//! stores them and `providers` produce or consume them.

use std::collections::BTreeMap;

use super::quota::Quota;

/// The provider that always exists: workers registered by hand on any host belong to it.
pub const LOCAL_PROVIDER: (&str, &str) = ("local", "local");
pub const LOCAL_REGION: &str = "local";

/// The resources of the flavor a machine is made of.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FlavorSpec {
    pub name: String,
    pub cpu: i32,
    pub mem: f64,
    pub disk: f64,
}

/// A flavor as a provider's catalogue lists it, with its offers by region name.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CatalogFlavor {
    pub name: String,
    pub cpu: i32,
    pub mem: f64,
    pub disk: f64,
    pub bandwidth: i32,
    pub gpu: String,
    pub gpumem: i32,
    pub has_gpu: bool,
    pub has_quick_disks: bool,
    /// (region name, cost, eviction)
    pub offers: Vec<(String, f64, f64)>,
}

/// One provider configuration of the `providers:` section (`<class>.<name>`), as the catalog and
/// the quotas need it: the regions it covers (as the configuration lists them, or implies them
/// through its quotas or its default region), its default region, and its quotas by region.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DeclaredProvider {
    pub class: String,
    pub name: String,
    pub regions: Vec<String>,
    pub default_region: Option<String>,
    pub quotas: BTreeMap<String, Quota>,
}

/// Every provider configuration the `providers:` section declares, by class then name. A value
/// made once from the configuration at the edge (`server`), so `db` reads no configuration
/// (docs/architecture.md#layers).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DeclaredProviders(pub Vec<DeclaredProvider>);

impl DeclaredProviders {
    /// The configured quota of a provider (`class.name`) in a region.
    pub fn quota(&self, provider: (&str, &str), region: &str) -> Option<Quota> {
        self.0
            .iter()
            .find(|p| (p.class.as_str(), p.name.as_str()) == provider)?
            .quotas
            .get(region)
            .copied()
    }
}
