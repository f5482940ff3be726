//! Entry points for the fuzzers (`fuzz/`) and their corpus regression test
//! (`tests/tests/fuzz_corpus.rs`): each takes arbitrary bytes, must never
//! panic, and checks what must hold of any input it accepts.

use prost::Message;

use crate::order::StartOrder;
use crate::pb;

/// A `StartOperationRequest` off the wire: refused with a field's name or
/// converted, and a converted order survives the wire again unchanged.
pub fn start_order(data: &[u8]) {
    let Ok(wire) = pb::StartOperationRequest::decode(data) else {
        return;
    };
    match StartOrder::try_from(wire) {
        Ok(order) => {
            let again = StartOrder::try_from(pb::StartOperationRequest::from(order.clone()))
                .expect("an order converted back is valid");
            assert_eq!(again, order, "an order survives the wire");
        }
        Err(e) => assert!(e.to_string().contains("field `"), "{e}"),
    }
}
