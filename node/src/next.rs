//! Test-only (feature `next-format`, binary `makiatto-next`): what makes
//! this build play a newer release. Its node record is of a format one newer than today's (with
//! a note), it signs a record of a kind today's release does not know, and
//! it logs what only it can read of them, so the mixed-version test
//! (`tests/tests/upgrade.rs`) sees them arrive through today's nodes.

use maki_protocol::{NOTE_KIND, Note, Record, SecretKey, Signed};
use tracing::info;

use crate::directory::Change;

/// The note a `makiatto-next` node puts in its own node record.
pub(crate) const NODE_NOTE: &str = "a field of the next format";

/// This node's note record (the new kind), signed.
pub(crate) fn note(key: &SecretKey) -> Record {
    let note = Note {
        format: 1,
        node: key.public(),
        text: format!("a record of kind {NOTE_KIND} from {}", key.public()),
        version: crate::now_millis(),
    };
    Record::Note(Signed::sign(key, &note))
}

/// Logs the records of the next format that a batch took in.
pub(crate) fn tell(changes: &[Change]) {
    for change in changes {
        let Change::Put(_, record) = change else {
            continue;
        };
        match record {
            Record::Note(signed) => {
                if let Ok(note) = signed.decode_trusted() {
                    info!(node = %note.node, text = %note.text, "read a note record");
                }
            }
            Record::Node(signed) => {
                if let Ok(node) = signed.decode_trusted()
                    && let Some(note) = node.note
                {
                    info!(node = %node.id, format = node.format, %note, "read a node record's note");
                }
            }
            _ => {}
        }
    }
}
