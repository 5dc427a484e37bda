//! Sparse mixture of experts (Mixtral): each token's FFN output is the router-weighted sum of
//! its top-k experts' SwiGLU outputs, weights = softmax over all experts, renormalised over
//! the chosen k.

use bora_kernels::{matmul_with, ops, Activations};

use crate::model::{mlp_forward, MlpScratch};
use crate::tensor::Weight;
use crate::weights::Mlp;

/// The buffers a mixture layer works in, kept with the model's step scratch so that a decode
/// step allocates nothing per layer once they have grown.
#[derive(Default)]
pub(crate) struct MoeScratch {
    /// Router logits, then probabilities, `[T, experts]`.
    logits: Vec<f32>,
    /// Per expert, the (token, weight) pairs routed to it.
    routes: Vec<Vec<(usize, f32)>>,
    /// Expert indices, for choosing the top k.
    order: Vec<usize>,
    /// One expert's tokens and its outputs for them, `[routed, hidden]`.
    xs: Vec<f32>,
    ys: Vec<f32>,
    mlp: MlpScratch,
}

/// `x` and `out` are `[T, hidden]`. Tokens are grouped by expert so each expert's weights are
/// read once per step for all the tokens routed to it.
pub(crate) fn moe_forward(
    router: &Weight,
    experts: &[Mlp],
    top_k: usize,
    x: &[f32],
    out: &mut [f32],
    act: Activations,
    s: &mut MoeScratch,
) {
    let h = router.cols;
    let n_exp = experts.len();
    let t = x.len() / h;
    s.logits.resize(t * n_exp, 0.0);
    matmul_with(&router.mat(), x, &mut s.logits, act);
    s.routes.resize_with(n_exp, Vec::new);
    s.routes.iter_mut().for_each(Vec::clear);
    for (ti, l) in s.logits.chunks_exact_mut(n_exp).enumerate() {
        ops::softmax(l);
        let chosen = top_k_indices(l, top_k, &mut s.order);
        let total: f32 = chosen.iter().map(|&e| l[e]).sum();
        for &e in chosen {
            s.routes[e].push((ti, l[e] / total));
        }
    }
    out.fill(0.0);
    for (expert, route) in experts.iter().zip(&s.routes) {
        if route.is_empty() {
            continue;
        }
        s.xs.clear();
        for &(ti, _) in route {
            s.xs.extend_from_slice(&x[ti * h..(ti + 1) * h]);
        }
        s.ys.resize(route.len() * h, 0.0);
        mlp_forward(expert, &s.xs, &mut s.ys, act, &mut s.mlp);
        for (&(ti, w), y) in route.iter().zip(s.ys.chunks_exact(h)) {
            for (o, yv) in out[ti * h..(ti + 1) * h].iter_mut().zip(y) {
                *o += w * yv;
            }
        }
    }
}

/// Indices of the k largest values of `v`, largest first; ties go to the lower index.
/// `order` is the buffer they are sorted in.
fn top_k_indices<'a>(v: &[f32], k: usize, order: &'a mut Vec<usize>) -> &'a [usize] {
    order.clear();
    order.extend(0..v.len());
    // A total order (ties by index), so the unstable sort, which needs no buffer, is exact.
    order.sort_unstable_by(|&a, &b| v[b].total_cmp(&v[a]).then(a.cmp(&b)));
    &order[..k.min(v.len())]
}

#[cfg(test)]
mod tests {
    use super::top_k_indices;

    #[test]
    fn top_k_picks_largest_first() {
        let mut order = Vec::new();
        assert_eq!(top_k_indices(&[0.1, 0.5, 0.2, 0.5], 2, &mut order), [1, 3]);
        assert_eq!(top_k_indices(&[0.3, 0.1], 1, &mut order), [0]);
    }
}
