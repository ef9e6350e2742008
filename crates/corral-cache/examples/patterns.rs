//! Every pattern of corral-cache against an in-memory "database", printing what happens.
//!
//! `cargo run -p corral-cache --example patterns`

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_cache::write_behind::WriteBehind;
use corral_cache::{BoxError, Cache};

#[derive(Default)]
struct Db {
    prices: Mutex<HashMap<u64, (u32, u64)>>, // id -> (price, version)
    reads: AtomicUsize,
}

impl Db {
    async fn price(&self, id: u64) -> Result<Option<u32>, BoxError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await; // a slow query
        Ok(self.prices.lock().unwrap().get(&id).map(|p| p.0))
    }
    async fn set_price(&self, id: u64, price: u32) -> Result<u64, BoxError> {
        let mut m = self.prices.lock().unwrap();
        let e = m.entry(id).or_insert((0, 0));
        *e = (price, e.1 + 1);
        Ok(e.1)
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let db = Arc::new(Db::default());
    for id in 1..=3 {
        db.set_price(id, 1000 * id as u32).await?;
    }
    let d = db.clone();
    let prices: Cache<u64, u32> = Cache::builder("prices")
        .max_entries(10_000)
        .time_to_live(Duration::from_secs(60))
        .negative_ttl(Duration::from_secs(5))
        .xfetch_beta(1.0)
        .loader(move |id| {
            let d = d.clone();
            async move { d.price(id).await }
        })
        .build()?;

    // Read-through with single-flight: 100 concurrent readers, one query.
    let readers: Vec<_> = (0..100)
        .map(|_| {
            let p = prices.clone();
            tokio::spawn(async move { p.get_or_load(1).await })
        })
        .collect();
    for r in readers {
        r.await??;
    }
    println!(
        "100 concurrent reads of key 1 -> {} database read(s)",
        db.reads.load(Ordering::SeqCst)
    );

    // Negative caching: an unknown id is remembered briefly.
    prices.get_or_load(42).await?;
    prices.get_or_load(42).await?;
    println!(
        "two reads of unknown id 42 -> {} database reads in all",
        db.reads.load(Ordering::SeqCst)
    );

    // Write-through, guarded by the version the database assigned.
    let d = db.clone();
    let v = prices
        .write_through(1, 1250, async move { d.set_price(1, 1250).await })
        .await?;
    println!("write-through: key 1 = {:?} at version {v}", prices.get(&1));
    println!(
        "a slow writer with version {} is refused: {}",
        v - 1,
        !prices.insert_versioned(1, 999, v - 1)
    );

    // Cache-aside with a fallible loader: errors are not cached.
    let e = prices
        .try_get_with(7, async { Err::<u32, _>("database down") })
        .await;
    println!(
        "loader error: {:?}; cached afterwards: {:?}",
        e.err(),
        prices.get(&7)
    );

    // Write-behind (not durable): the cache now, the database in batches.
    let d = db.clone();
    let wb = WriteBehind::builder()
        .batch(10)
        .flush_interval(Duration::from_millis(100))
        .build(prices.clone(), move |batch: Vec<(u64, u32)>| {
            let d = d.clone();
            async move {
                for (id, p) in &batch {
                    d.set_price(*id, *p).await?;
                }
                println!("write-behind flushed {} write(s)", batch.len());
                Ok::<_, BoxError>(())
            }
        });
    for id in 10..15 {
        wb.write(id, 500).await?;
    }
    wb.shutdown().await;

    // The verifier: a change behind the cache's back is found and fixed.
    prices.get_or_load(2).await?;
    db.prices.lock().unwrap().insert(2, (2222, 9));
    let report = prices.verify_sample(100).await;
    println!(
        "verifier: checked {}, drifted {} (ratio {:.2}); key 2 now {:?}",
        report.checked,
        report.drifted,
        report.drift_ratio(),
        prices.get_or_load(2).await?
    );

    // Tags and namespace bumps.
    prices.insert_tagged(100, 1, vec!["provider-7".into()]);
    prices.invalidate_tag("provider-7");
    println!("after invalidate_tag: key 100 = {:?}", prices.get(&100));
    prices.bump_namespace();
    println!("after bump_namespace: key 1 = {:?}", prices.get(&1));
    Ok(())
}
