//! The catalog's value types that `db` and `providers` share: the resources of a flavor a machine
//! is made of ([`FlavorSpec`]), a flavor as a provider's catalogue lists it ([`CatalogFlavor`]),
//! and the names of the provider and region that always exist. Plain data, no rules: `db::catalog`
//! stores them and `providers` produce or consume them.

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
