//! Sparse mixture of experts (Mixtral): each token's FFN output is the router-weighted sum of
//! its top-k experts' SwiGLU outputs, weights = softmax over all experts, renormalised over
//! the chosen k.

use bora_kernels::{matmul_with, ops, Activations};

use crate::model::{mlp_forward, MlpScratch};
use crate::tensor::Weight;
use crate::weights::Mlp;

/// `x` and `out` are `[T, hidden]`. Tokens are grouped by expert so each expert's weights are
/// read once per step for all the tokens routed to it.
pub(crate) fn moe_forward(
    router: &Weight,
    experts: &[Mlp],
    top_k: usize,
    x: &[f32],
    out: &mut [f32],
    act: Activations,
    mlp: &mut MlpScratch,
) {
    let h = router.cols;
    let n_exp = experts.len();
    let t = x.len() / h;
    let mut logits = vec![0f32; t * n_exp];
    matmul_with(&router.mat(), x, &mut logits, act);
    // routes[e] = [(token, weight)]
    let mut routes: Vec<Vec<(usize, f32)>> = vec![Vec::new(); n_exp];
    for (ti, l) in logits.chunks_exact_mut(n_exp).enumerate() {
        ops::softmax(l);
        let chosen = top_k_indices(l, top_k);
        let total: f32 = chosen.iter().map(|&e| l[e]).sum();
        for e in chosen {
            routes[e].push((ti, l[e] / total));
        }
    }
    out.fill(0.0);
    for (expert, route) in experts.iter().zip(&routes) {
        if route.is_empty() {
            continue;
        }
        let mut xs = Vec::with_capacity(route.len() * h);
        for &(ti, _) in route {
            xs.extend_from_slice(&x[ti * h..(ti + 1) * h]);
        }
        let mut ys = vec![0f32; route.len() * h];
        mlp_forward(expert, &xs, &mut ys, act, mlp);
        for (&(ti, w), y) in route.iter().zip(ys.chunks_exact(h)) {
            for (o, yv) in out[ti * h..(ti + 1) * h].iter_mut().zip(y) {
                *o += w * yv;
            }
        }
    }
}

/// Indices of the k largest values, largest first; ties go to the lower index.
fn top_k_indices(v: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

#[cfg(test)]
mod tests {
    use super::top_k_indices;

    #[test]
    fn top_k_picks_largest_first() {
        assert_eq!(top_k_indices(&[0.1, 0.5, 0.2, 0.5], 2), vec![1, 3]);
        assert_eq!(top_k_indices(&[0.3, 0.1], 1), vec![0]);
    }
}
