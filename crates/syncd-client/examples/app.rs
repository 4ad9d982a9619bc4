//! The README's example of an app on the `syncd-client` crate, built by the
//! test suite (and compared with the README by tests/client_crate.rs) so
//! that the README cannot drift from the API. With a daemon listening at
//! that path: `cargo run -p syncd-client --example app`.

#[tokio::main]
async fn main() -> Result<(), syncd_client::ClientError> {
    let socket = std::path::Path::new("/run/user/1000/syncd/syncd.sock");
    let mut c = syncd_client::Client::connect(socket, "my-app").await?;
    let (id, op_id) = c.put("todos", None, serde_json::json!({"n": 1})).await?;
    c.wait_synced(&op_id).await?; // optional: until the server has it
    println!("{:?}", c.get("todos", &id).await?);
    Ok(())
}
