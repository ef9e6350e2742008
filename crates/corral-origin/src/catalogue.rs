//! The lab-test catalogue the origin starts with.

use serde::Serialize;

/// A lab-test package of the catalogue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Package {
    /// Identifier, as in `/packages/{id}`.
    pub id: u32,
    /// Display name.
    pub name: String,
    /// The tests the package includes.
    pub inclusions: Vec<String>,
    /// Price in cents of `currency`.
    pub price_cents: u64,
    /// ISO 4217 currency code.
    pub currency: String,
    /// Laboratories that perform it.
    pub providers: Vec<String>,
}

/// The catalogue the origin starts with (prices change through the admin route).
pub fn catalogue() -> Vec<Package> {
    let p = |id, name: &str, inc: &[&str], price, prov: &[&str]| Package {
        id,
        name: name.into(),
        inclusions: inc.iter().map(|s| s.to_string()).collect(),
        price_cents: price,
        currency: "EUR".into(),
        providers: prov.iter().map(|s| s.to_string()).collect(),
    };
    vec![
        p(
            1,
            "Basic health check",
            &["Complete blood count", "Lipid panel", "Fasting glucose"],
            3999,
            &["Labcorp North", "City Diagnostics"],
        ),
        p(
            2,
            "Thyroid panel",
            &["TSH", "Free T4", "Free T3"],
            5499,
            &["City Diagnostics"],
        ),
        p(
            3,
            "Vitamin check",
            &["Vitamin D", "Vitamin B12", "Folate"],
            4499,
            &["Labcorp North", "Riverside Lab"],
        ),
        p(
            4,
            "Diabetes screen",
            &["HbA1c", "Fasting glucose", "Insulin"],
            2999,
            &["Riverside Lab"],
        ),
    ]
}
