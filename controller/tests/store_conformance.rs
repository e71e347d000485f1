//! The conformance suite (controller/query/conformance/*.json) through the controller's
//! [`Store`] interface, on both backends: the embedded store (one data dir per data set) and the
//! MongoDB backend against a real MongoDB-wire server (secantusdb started by
//! tests/mongodb-server, or the server named by `QS_TEST_MONGODB_URI`). The MongoDB run fails,
//! never skips, when no server can be started.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

/// Opens a fresh store for a case set (named by its file).
type OpenStore = Box<dyn FnMut(&str) -> futures::future::BoxFuture<'static, Store> + Send>;

use qs_controller::store::{Store, StoreError, StoreOptions, Write};
use qs_query::conformance::{self, Backend, CaseFile, Operation, Reply, Side};
use qs_query::{Count, Distinct, Pipeline, Query, FIND_KEY};
use serde_json::Value;

fn cases() -> Vec<CaseFile> {
    let (files, errors) = conformance::load_dir(&conformance::default_dir());
    for e in &errors {
        eprintln!("cannot use case file: {e}");
    }
    assert!(
        errors.is_empty(),
        "{} case files could not be used",
        errors.len()
    );
    let total: usize = files.iter().map(|f| f.cases.len()).sum();
    assert!(total >= 300, "only {total} cases");
    files
}

/// Answers the suite's requests through [`Store`]: each data set in its own store.
struct StoreBackend {
    open: OpenStore,
    stores: HashMap<String, Store>,
}

fn refused_or_failed(e: StoreError) -> Result<Reply, String> {
    match e {
        StoreError::Refused { message } => Ok(Reply::Refused(message)),
        other => Err(other.to_string()),
    }
}

impl Backend for StoreBackend {
    async fn load(&mut self, id: &str, docs: &[Value]) -> Result<(), String> {
        let store = (self.open)(id).await;
        let mut writes = Vec::with_capacity(docs.len());
        for (i, doc) in docs.iter().enumerate() {
            let key = doc
                .get(FIND_KEY)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| format!("~{i:04}"));
            writes.push(Write::Inventory {
                id: key,
                doc: doc.as_object().cloned().ok_or("not a document")?,
            });
        }
        store
            .write_batch(writes)
            .await
            .map_err(|e| format!("loading {id}: {e}"))?;
        self.stores.insert(id.to_owned(), store);
        Ok(())
    }

    async fn execute(&mut self, id: &str, operation: &Operation) -> Result<Reply, String> {
        let store = self
            .stores
            .get(id)
            .ok_or_else(|| format!("data set {id} was not loaded"))?;
        let body = operation.body();
        macro_rules! parse {
            ($e:expr) => {
                match $e {
                    Ok(v) => v,
                    Err(e) => return Ok(Reply::Refused(e.to_string())),
                }
            };
        }
        let answer = match operation {
            Operation::Find(_) => store
                .find(&parse!(Query::from_request(body)))
                .await
                .map(Value::Array),
            Operation::Count(_) => store
                .count(&parse!(Count::from_request(body)))
                .await
                .map(Value::from),
            Operation::Distinct(_) => store
                .distinct(&parse!(Distinct::from_request(body)))
                .await
                .map(Value::Array),
            Operation::Aggregate(_) => store
                .aggregate(&parse!(Pipeline::from_request(body)))
                .await
                .map(Value::Array),
        };
        match answer {
            Ok(v) => Ok(Reply::Answer(v)),
            Err(e) => refused_or_failed(e),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_answers_every_case_as_mongodb_does() {
    let files = cases();
    let root = tempfile::tempdir().unwrap();
    let base = root.path().to_owned();
    let mut backend = StoreBackend {
        open: Box::new(move |id| {
            let dir = base.join(id);
            Box::pin(
                async move { Store::open_embedded_with(&dir, StoreOptions::default()).unwrap() },
            )
        }),
        stores: HashMap::new(),
    };
    let report = conformance::run(&files, &mut backend, Side::Ours).await;
    println!("embedded store: {}", report.render());
    assert!(report.failures.is_empty(), "{}", report.render());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_store_answers_every_case_as_mongodb_does() {
    let files = cases();
    let server_uri = qs_tests::test_mongodb_uri().unwrap_or_else(|e| panic!("{e:#}"));
    let uri = server_uri.trim_end_matches('/').to_owned();
    let prefix = format!("qs_store_conformance_{}", std::process::id());
    let mut databases = Vec::new();
    let (tx, rx) = std::sync::mpsc::channel();
    let mut backend = StoreBackend {
        open: Box::new(move |id| {
            let url = format!("{uri}/{prefix}_{}", id.replace('.', "_"));
            let _ = tx.send(url.clone());
            Box::pin(async move {
                Store::open_mongodb(&url, StoreOptions::default())
                    .await
                    .unwrap()
            })
        }),
        stores: HashMap::new(),
    };
    let report = conformance::run(&files, &mut backend, Side::Ours).await;
    while let Ok(url) = rx.try_recv() {
        databases.push(url);
    }
    drop_databases(&databases).await;
    println!("MongoDB store on {}: {}", server_uri, report.render());
    // Where secantusdb answers otherwise than MongoDB (marked cases), the store passes the
    // server's answer through: those are the server's, not the backend's, failures.
    let unmarked: Vec<_> = report
        .failures
        .iter()
        .filter(|f| !marked(&files, &f.case))
        .collect();
    assert!(
        unmarked.is_empty(),
        "{} unmarked failures:\n{}",
        unmarked.len(),
        report.render()
    );
}

/// Whether a failed case (`file: name`) carries a `secantusdb` or `ours_only` mark.
fn marked(files: &[CaseFile], label: &str) -> bool {
    files.iter().any(|f| {
        let file = f
            .path
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        f.cases.iter().any(|c| {
            format!("{file}: {}", c.name) == label
                && (c.secantusdb.is_some() || c.ours_only.is_some())
        })
    })
}

async fn drop_databases(urls: &[String]) {
    for url in urls {
        if let Ok(client) = mongodb::Client::with_uri_str(url).await {
            if let Some(db) = client.default_database() {
                let _ = db.drop().await;
            }
        }
    }
}

/// Record collections answer queries as inventory does, on either backend: filters on indexed
/// and other paths, sort (ties in key order), skip, limit, projection, count; index entries
/// follow rewrites and deletes; records that are not objects or carry `_id` are refused.
async fn records_answer_queries(store: &Store) {
    use qs_controller::store::Collection;
    use serde_json::json;
    let task = |key: &str, job: &str, host: &str, state: &str, n: i64| Write::Record {
        collection: Collection::Tasks,
        key: key.into(),
        value: Some(
            json!({"job": job, "host": host, "state": state, "n": n, "tags": [state, "t"]}),
        ),
    };
    let mut writes = vec![Write::Record {
        collection: Collection::Jobs,
        key: "j1".into(),
        value: Some(json!({"state": "running", "created_at": "2026-12-01T10:00:00Z"})),
    }];
    for i in 0..12 {
        let state = ["queued", "running", "done"][i % 3];
        writes.push(task(
            &format!("t{i:02}"),
            if i < 8 { "j1" } else { "j2" },
            &format!("h{}", i % 4),
            state,
            (i as i64 * 7) % 5,
        ));
    }
    store.write_batch(writes).await.unwrap();

    let find = |body: Value| async move {
        let q = Query::from_request(&body).unwrap();
        store.find_records(Collection::Tasks, &q).await.unwrap()
    };
    let keys = |docs: &[Value]| -> Vec<String> {
        docs.iter()
            .map(|d| d["n"].to_string() + "/" + d["host"].as_str().unwrap_or("-"))
            .collect()
    };
    let all = find(json!({})).await;
    assert_eq!(all.len(), 12);
    assert_eq!(
        all[0],
        json!({"job": "j1", "host": "h0", "state": "queued", "n": 0, "tags": ["queued", "t"]})
    );
    // Every answer is the engine's answer over all the records.
    for body in [
        json!({"filter": {"job": "j1"}}),
        json!({"filter": {"job": {"$in": ["j2", "j3"]}, "state": "done"}}),
        json!({"filter": {"host": "h1", "n": {"$gte": 2}}}),
        json!({"filter": {"state": {"$gt": "queued"}}}),
        json!({"filter": {"tags": "running"}}),
        json!({"filter": {"n": {"$lt": 3}}, "sort": {"n": -1}, "skip": 1, "limit": 3}),
        json!({"sort": {"state": 1, "n": 1}, "projection": {"host": 1, "n": 1}}),
        json!({"filter": {"job": "j1"}, "projection": {"tags": 0, "job": 0}, "limit": 2}),
    ] {
        let q = Query::from_request(&body).unwrap();
        let expected = q.run(all.iter());
        let got = store.find_records(Collection::Tasks, &q).await.unwrap();
        assert_eq!(got, expected, "{body}");
        let c = Count::from_request(
            &json!({"filter": body.get("filter").cloned().unwrap_or(json!({}))}),
        )
        .unwrap();
        let counted = store.count_records(Collection::Tasks, &c).await.unwrap();
        assert_eq!(counted, c.run(all.iter()), "{body}");
    }
    assert_eq!(
        keys(&find(json!({"filter": {"job": "j2"}, "sort": {"n": 1}})).await),
        vec!["0/h2", "1/h0", "2/h3", "3/h1"]
    );
    // Ties of a sort come in key order.
    let tied = find(json!({"filter": {"state": "queued"}, "sort": {"job": 1}})).await;
    assert_eq!(keys(&tied), vec!["0/h0", "1/h3", "2/h2", "3/h1"]);

    // Index entries follow a rewrite and a delete.
    store
        .write_batch(vec![
            task("t00", "j9", "h0", "done", 0),
            Write::Record {
                collection: Collection::Tasks,
                key: "t01".into(),
                value: None,
            },
        ])
        .await
        .unwrap();
    assert_eq!(find(json!({"filter": {"job": "j9"}})).await.len(), 1);
    assert_eq!(find(json!({"filter": {"job": "j1"}})).await.len(), 6);
    let running = Count::from_request(&json!({"filter": {"state": "running"}})).unwrap();
    assert_eq!(
        store
            .count_records(Collection::Tasks, &running)
            .await
            .unwrap(),
        3
    );
    assert!(store
        .get_record(Collection::Tasks, "t01")
        .await
        .unwrap()
        .is_none());

    // Jobs: an indexed range; an empty collection answers nothing.
    let jobs =
        Query::from_request(&json!({"filter": {"created_at": {"$gte": "2026-12-01"}}})).unwrap();
    assert_eq!(
        store.find_records(Collection::Jobs, &jobs).await.unwrap(),
        vec![json!({"state": "running", "created_at": "2026-12-01T10:00:00Z"})]
    );
    assert_eq!(
        store
            .get_record(Collection::Jobs, "j1")
            .await
            .unwrap()
            .unwrap()["state"],
        json!("running")
    );
    let everything = Query::from_request(&json!({})).unwrap();
    assert!(store
        .find_records(Collection::Assets, &everything)
        .await
        .unwrap()
        .is_empty());

    // Not an object, or `_id` inside: refused, nothing of the batch written.
    for bad in [json!([1]), json!({"_id": 1, "state": "x"})] {
        let err = store
            .write_batch(vec![
                Write::Record {
                    collection: Collection::Jobs,
                    key: "j2".into(),
                    value: Some(json!({"state": "queued"})),
                },
                Write::Record {
                    collection: Collection::Jobs,
                    key: "j3".into(),
                    value: Some(bad),
                },
            ])
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::NotADocument { .. } | StoreError::ReservedField { .. }
            ),
            "{err}"
        );
    }
    assert!(store
        .get_record(Collection::Jobs, "j2")
        .await
        .unwrap()
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_record_collections_answer_queries() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_embedded(dir.path()).unwrap();
    records_answer_queries(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_record_collections_answer_queries() {
    let server_uri = qs_tests::test_mongodb_uri().unwrap_or_else(|e| panic!("{e:#}"));
    let url = format!(
        "{}/qs_records_{}",
        server_uri.trim_end_matches('/'),
        std::process::id()
    );
    let store = Store::open_mongodb(&url, StoreOptions::default())
        .await
        .unwrap();
    records_answer_queries(&store).await;
    drop_databases(&[url]).await;
}

/// On a replica set (one node of secantusdb), a batch is one transaction: a failed
/// compare-and-swap leaves nothing of its batch behind, inventory, history and records alike;
/// two controllers writing the same documents at once both land, one after the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_batches_are_transactions_on_a_replica_set() {
    use qs_controller::store::Collection;
    use serde_json::json;
    let dir = tempfile::tempdir().unwrap();
    let server = qs_tests::mongodb::MongoServer::start(dir.path(), 0, true)
        .await
        .unwrap();
    let url = server.url("qs_transactions");
    let store = Store::open_mongodb(&url, StoreOptions::default())
        .await
        .unwrap();
    let inv = |id: &str, n: i64| Write::Inventory {
        id: id.into(),
        doc: json!({"n": n}).as_object().unwrap().clone(),
    };
    store.write_batch(vec![inv("b", 1)]).await.unwrap();
    let err = store
        .write_batch(vec![
            inv("a", 1),
            Write::Record {
                collection: Collection::Jobs,
                key: "j1".into(),
                value: Some(json!({"state": "queued"})),
            },
            Write::InventoryIfVersion {
                id: "b".into(),
                doc: json!({"n": 2}).as_object().unwrap().clone(),
                version: 0,
            },
        ])
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict { found: 1, .. }),
        "{err}"
    );
    assert!(store.get_inventory("a").await.unwrap().is_none());
    assert!(store.history("a").await.unwrap().is_empty());
    assert!(store
        .get_record(Collection::Jobs, "j1")
        .await
        .unwrap()
        .is_none());
    assert_eq!(store.get_inventory("b").await.unwrap().unwrap()["n"], 1);

    // Two controllers on one database, each writing both documents in every batch.
    let other = Store::open_mongodb(&url, StoreOptions::default())
        .await
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for (k, s) in [store.clone(), other].into_iter().enumerate() {
        tasks.spawn(async move {
            for i in 0..10 {
                let n = (k * 100 + i) as i64;
                s.write_batch(vec![inv("a", n), inv("b", n)]).await.unwrap();
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let a = store.get_inventory("a").await.unwrap().unwrap();
    let b = store.get_inventory("b").await.unwrap().unwrap();
    // Batches are serialised: both documents hold the same batch's values.
    assert_eq!(a["n"], b["n"]);
    assert_eq!(store.inventory_version("a").await.unwrap(), 20);
    assert_eq!(store.inventory_version("b").await.unwrap(), 21);
}
