//! The CRI log writer: any output, cut into any chunks, with any record
//! size (split lines, partial lines, lines far longer than a record)
//! becomes records that never hold a newline nor exceed the size, that
//! kubelet's format parses back, and that give the output back exactly.
#![no_main]

use berth_shim::cri_record::{record_line, LineSplitter, Stream, Tag, MAX_LINE};
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, SystemTime};

fuzz_target!(|data: &[u8]| {
    let [size, chunk, stamp @ ..] = data else {
        return;
    };
    let (stamp, output) = stamp.split_at(stamp.len().min(4));
    // Small records make every input a "huge line"; 0 is the real size.
    let max = match size {
        0 => MAX_LINE,
        n => usize::from(n % 32) + 1,
    };
    let chunk = usize::from(*chunk) + 1;
    let mut seconds = [0u8; 4];
    seconds[..stamp.len()].copy_from_slice(stamp);
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(u32::from_le_bytes(seconds)));

    let mut records: Vec<(Tag, Vec<u8>)> = Vec::new();
    let mut emit = |tag: Tag, content: &[u8]| {
        records.push((tag, content.to_vec()));
        Ok(())
    };
    let mut splitter = LineSplitter::new(max);
    for piece in output.chunks(chunk) {
        splitter.feed(piece, &mut emit).expect("emit never fails");
    }
    splitter.finish(&mut emit).expect("emit never fails");

    let mut rebuilt = Vec::new();
    let last = records.len().saturating_sub(1);
    for (i, (tag, content)) in records.iter().enumerate() {
        assert!(content.len() <= max, "a record exceeds {max} bytes");
        assert!(!content.contains(&b'\n'), "a record holds a newline");
        if *tag == Tag::Partial && i != last {
            assert_eq!(
                content.len(),
                max,
                "a partial record before the end is not full"
            );
        }
        rebuilt.extend_from_slice(content);
        if *tag == Tag::Full {
            rebuilt.push(b'\n');
        }
        // The line parses as kubelet's parseCRILog does.
        let line = record_line(at, Stream::Stderr, *tag, content);
        let body = line.strip_suffix(b"\n").expect("a record ends its line");
        let mut fields = body.splitn(4, |&b| b == b' ');
        let timestamp = fields.next().expect("timestamp");
        assert_eq!(timestamp.len(), 30, "fixed-width RFC 3339 timestamp");
        assert_eq!(timestamp.last(), Some(&b'Z'));
        assert_eq!(fields.next(), Some(&b"stderr"[..]));
        let expected_tag: &[u8] = if *tag == Tag::Full { b"F" } else { b"P" };
        assert_eq!(fields.next(), Some(expected_tag));
        assert_eq!(fields.next().unwrap_or_default(), &content[..]);
    }
    assert_eq!(rebuilt, output, "the records do not give the output back");
});
