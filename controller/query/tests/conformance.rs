//! The conformance suite (controller/query/conformance/*.json) against this engine and against
//! a real MongoDB-wire server: secantusdb started by tests/mongodb-server, or the server named
//! by `QS_TEST_MONGODB_URI`. The server run fails when no server can be started.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures::TryStreamExt;
use mongodb::bson::{Bson, Document};
use mongodb::{Client, Collection};
use qs_query::conformance::{self, Backend, CaseFile, Operation, Reply, Side};
use qs_store::mongo::{query_document, to_bson, to_json};
use serde_json::Value;

fn cases() -> Vec<CaseFile> {
    let (files, errors) = conformance::load_dir(&conformance::default_dir());
    for e in &errors {
        let mut line = format!("cannot use case file: {e}");
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            line.push_str(&format!(": {s}"));
            source = s.source();
        }
        eprintln!("{line}");
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

#[tokio::test]
async fn engine_answers_every_case_as_mongodb_does() {
    let files = cases();
    let report = conformance::run(
        &files,
        &mut conformance::EngineBackend::default(),
        Side::Ours,
    )
    .await;
    println!("engine: {}", report.render());
    assert!(report.failures.is_empty(), "{}", report.render());
}

/// A request document as the MongoDB backend sends it (its conversion, in one place:
/// `qs_store::mongo`).
fn doc_of(v: Option<&Value>) -> Result<Document, String> {
    match v {
        None | Some(Value::Null) => Ok(Document::new()),
        Some(v) => Ok(query_document(v)),
    }
}

struct ServerBackend {
    client: Client,
    database: String,
}

impl ServerBackend {
    fn collection(&self, id: &str) -> Collection<Document> {
        self.client
            .database(&self.database)
            .collection(&id.replace('.', "_"))
    }
}

fn refused(e: mongodb::error::Error) -> Result<Reply, String> {
    match *e.kind {
        mongodb::error::ErrorKind::Command(ref c) => Ok(Reply::Refused(c.message.clone())),
        _ => Err(format!("{e}")),
    }
}

impl Backend for ServerBackend {
    async fn load(&mut self, id: &str, docs: &[Value]) -> Result<(), String> {
        let coll = self.collection(id);
        coll.drop().await.map_err(|e| format!("drop: {e}"))?;
        let docs: Vec<Document> = docs
            .iter()
            .filter(|d| d.is_object())
            .filter_map(|d| match to_bson(d) {
                Bson::Document(d) => Some(d),
                _ => None,
            })
            .collect();
        if !docs.is_empty() {
            coll.insert_many(docs)
                .await
                .map_err(|e| format!("insert: {e}"))?;
        } else {
            self.client
                .database(&self.database)
                .create_collection(id.replace('.', "_"))
                .await
                .map_err(|e| format!("create: {e}"))?;
        }
        Ok(())
    }

    async fn execute(&mut self, id: &str, operation: &Operation) -> Result<Reply, String> {
        let coll = self.collection(id);
        let body = operation.body();
        match operation {
            Operation::Find(_) => {
                let mut find = coll
                    .find(doc_of(body.get("filter"))?)
                    .projection(doc_of(Some(&qs_query::server::find_projection(
                        body.get("projection"),
                    )))?);
                if let Some(sort) = body.get("sort").filter(|s| !s.is_null()) {
                    find = find.sort(doc_of(Some(sort))?);
                }
                if let Some(skip) = body.get("skip").and_then(Value::as_u64) {
                    find = find.skip(skip);
                }
                if let Some(limit) = body.get("limit").and_then(Value::as_i64) {
                    find = find.limit(limit);
                }
                let cursor = match find.await {
                    Ok(c) => c,
                    Err(e) => return refused(e),
                };
                match cursor.try_collect::<Vec<Document>>().await {
                    Ok(docs) => Ok(Reply::Answer(Value::Array(
                        docs.into_iter()
                            .map(|d| to_json(&Bson::Document(d)))
                            .collect(),
                    ))),
                    Err(e) => refused(e),
                }
            }
            Operation::Count(_) => match coll.count_documents(doc_of(body.get("filter"))?).await {
                Ok(n) => Ok(Reply::Answer(Value::from(n))),
                Err(e) => refused(e),
            },
            Operation::Distinct(_) => {
                let path = body.get("path").and_then(Value::as_str).unwrap_or("");
                match coll.distinct(path, doc_of(body.get("filter"))?).await {
                    Ok(values) => Ok(Reply::Answer(Value::Array(
                        values.iter().map(to_json).collect(),
                    ))),
                    Err(e) => refused(e),
                }
            }
            Operation::Aggregate(_) => {
                let Some(Value::Array(stages)) = body.get("pipeline") else {
                    return Ok(Reply::Refused("pipeline is not an array".into()));
                };
                let pipeline = qs_query::server::pipeline_stages(stages)
                    .iter()
                    .map(|s| doc_of(Some(s)))
                    .collect::<Result<Vec<_>, _>>()?;
                let cursor = match coll.aggregate(pipeline).await {
                    Ok(c) => c,
                    Err(e) => return refused(e),
                };
                match cursor.try_collect::<Vec<Document>>().await {
                    Ok(docs) => Ok(Reply::Answer(Value::Array(
                        docs.into_iter()
                            .map(|d| to_json(&Bson::Document(d)))
                            .collect(),
                    ))),
                    Err(e) => refused(e),
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_wire_server_answers_every_unmarked_case_as_mongodb_does() {
    let files = cases();
    let server_uri = qs_tests::test_mongodb_uri().unwrap_or_else(|e| panic!("{e:#}"));
    let client = Client::with_uri_str(&server_uri)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {server_uri}: {e}"));
    let database = format!("qs_conformance_{}", std::process::id());
    let mut backend = ServerBackend {
        client: client.clone(),
        database: database.clone(),
    };
    let report = conformance::run(&files, &mut backend, Side::Server).await;
    let _ = client.database(&database).drop().await;
    println!("server {}: {}", server_uri, report.render());
    assert!(report.failures.is_empty(), "{}", report.render());
}
