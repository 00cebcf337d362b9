//! A whole server connection fed arbitrary bytes by its peer: the reader,
//! stream states, buffers and the writer never panic, and the connection
//! always ends (the peer's EOF ends it; the application reads, replies,
//! writes and drops streams the whole time).
#![no_main]

use berth_spdy::{Config, Connection, Headers};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (server_io, mut peer) = tokio::io::duplex(16 * 1024);
        let config = Config {
            max_streams: 8,
            stream_buffer: 4096,
            connection_buffer: 16 * 1024,
            ..Config::default()
        };
        let mut conn = Connection::server(server_io, config);
        let app = tokio::spawn(async move {
            let mut tasks = Vec::new();
            while let Some(mut stream) = conn.accept().await {
                let echo = stream.id() % 4 == 1;
                tasks.push(tokio::spawn(async move {
                    if stream.reply(Headers::new(), false).await.is_err() {
                        return;
                    }
                    while let Ok(Some(chunk)) = stream.read_chunk().await {
                        if echo && stream.write_all(&chunk).await.is_err() {
                            return;
                        }
                    }
                    let _ = stream.close().await;
                }));
            }
            let _ = conn.close().await;
            for task in tasks {
                let _ = task.await;
            }
        });
        let (mut peer_read, mut peer_write) = tokio::io::split(&mut peer);
        let feed = async {
            let _ = peer_write.write_all(data).await;
            let _ = peer_write.shutdown().await;
        };
        let drain = async {
            let mut sink = Vec::new();
            let _ = peer_read.read_to_end(&mut sink).await;
        };
        tokio::join!(feed, drain);
        app.await.expect("the application task does not panic");
    });
});
